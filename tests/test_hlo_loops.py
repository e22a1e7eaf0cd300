"""Loop trip counts of `lav2_jax.core.flops.hlo_flops` on hand-written HLO, and `lav2 compile` config overrides."""

import pytest

from lav2_jax.cli import compile as compile_cli
from lav2_jax.cli.main import main
from lav2_jax.core.flops import hlo_flops

# A 3-layer scan (s32 counter from 0 by 1) whose body holds an SPMD windowed einsum: a u32 counter from 0 by 2
# below 4 (two shards per iteration, two iterations), one [8,16]x[16,32] dot per iteration inside a fusion.
HLO = """HloModule m

%fused_dot (p0: bf16[8,16], p1: bf16[16,32]) -> bf16[8,32] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,32]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%windowed_cond (wp: (u32[], bf16[8,16], bf16[16,32])) -> pred[] {
  %wp = (u32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %limit = u32[] constant(4)
  %wi = u32[] get-tuple-element(%wp), index=0
  ROOT %lt = pred[] compare(%wi, %limit), direction=LT
}

%windowed_body (wb: (u32[], bf16[8,16], bf16[16,32])) -> (u32[], bf16[8,16], bf16[16,32]) {
  %wb = (u32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %two = u32[] constant(2)
  %seven = u32[] constant(7)
  %bi = u32[] get-tuple-element(%wb), index=0
  %bx = bf16[8,16]{1,0} get-tuple-element(%wb), index=1
  %bw = bf16[16,32]{1,0} get-tuple-element(%wb), index=2
  %f = bf16[8,32]{1,0} fusion(%bx, %bw), kind=kOutput, calls=%fused_dot
  %next = u32[] add(%bi, %two)
  ROOT %t = (u32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%next, %bx, %bw)
}

%scan_cond (sp: (s32[], bf16[8,16], bf16[16,32])) -> pred[] {
  %sp = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %n = s32[] constant(3)
  %si = s32[] get-tuple-element(%sp), index=0
  ROOT %slt = pred[] compare(%si, %n), direction=LT
}

%scan_body (sb: (s32[], bf16[8,16], bf16[16,32])) -> (s32[], bf16[8,16], bf16[16,32]) {
  %sb = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %one = s32[] constant(1)
  %zero = u32[] constant(0)
  %z = u32[] copy(%zero)
  %i = s32[] get-tuple-element(%sb), index=0
  %x = bf16[8,16]{1,0} get-tuple-element(%sb), index=1
  %w = bf16[16,32]{1,0} get-tuple-element(%sb), index=2
  %init = (u32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%z, %x, %w)
  %loop = (u32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) while(%init), condition=%windowed_cond, body=%windowed_body
  %i1 = s32[] add(%i, %one)
  ROOT %out = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%i1, %x, %w)
}

ENTRY %main (a: bf16[8,16], b: bf16[16,32]) -> bf16[8,16] {
  %a = bf16[8,16]{1,0} parameter(0)
  %b = bf16[16,32]{1,0} parameter(1)
  %c0 = s32[] constant(0)
  %st = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%c0, %a, %b)
  %scan = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) while(%st), condition=%scan_cond, body=%scan_body
  ROOT %r = bf16[8,16]{1,0} get-tuple-element(%scan), index=1
}
"""


def test_windowed_einsum_loop_counts_its_real_trips():
    out = hlo_flops(HLO)
    assert out["loops"] == {"scan_body": 3, "windowed_body": 2}  # not 4 (the bound) nor 1 (u32 unrecognised)
    assert out["flops"] == 3 * 2 * (2 * 8 * 32 * 16)


def test_loop_starting_above_zero():
    text = HLO.replace("%zero = u32[] constant(0)", "%zero = u32[] constant(1)")
    assert hlo_flops(text)["loops"]["windowed_body"] == 2  # ceil((4 - 1) / 2)
    text = HLO.replace("direction=LT\n}\n\n%windowed_body", "direction=LE\n}\n\n%windowed_body")
    assert hlo_flops(text)["loops"]["windowed_body"] == 3  # 0, 2, 4


def test_counter_read_through_a_copy():
    # Big TPU programs (33B on v5p-16 at 256 rows) move the windowed-einsum counter to scalar memory with a copy
    # before stepping it: add(copy(counter), 2). Read by its bound alone (4) the loop counted every windowed matmul
    # twice (compiled/analytic 2.09 instead of 1.51).
    text = HLO.replace("%next = u32[] add(%bi, %two)", "%bic = u32[] copy(%bi)\n  %next = u32[] add(%bic, %two)")
    text = text.replace("tuple(%next, %bx, %bw)", "tuple(%nextc, %bx, %bw)").replace(
        "%next = u32[] add(%bic, %two)", "%next = u32[] add(%bic, %two)\n  %nextc = u32[] bitcast(%next)")
    out = hlo_flops(text)
    assert out["loops"] == {"scan_body": 3, "windowed_body": 2} and out["guessed_loops"] == []
    assert out["flops"] == hlo_flops(HLO)["flops"] == 3 * 2 * (2 * 8 * 32 * 16)
    unknown = HLO.replace("%next = u32[] add(%bi, %two)", "%next = u32[] multiply(%bi, %two)")
    assert hlo_flops(unknown)["guessed_loops"] == ["windowed_body"]  # not a counted loop: said so


def test_compile_config_overrides(capsys):
    config = compile_cli._overridden("configs/tiny_joint.py", ["--config.batch.caption=6",
                                                               "--config.model.remat_policy=dots_no_batch"])
    assert config.batch.caption == 6 and config.model.remat_policy == "dots_no_batch"
    assert main(["compile", "--config", "configs/tiny_joint.py", "--topology", "v5e:2x2",
                 "--config.batch.nope=3"]) == 2
    assert "no field 'batch.nope'" in capsys.readouterr().err
    assert main(["compile", "--model", "bench-s", "--topology", "v5e:2x2", "--config.batch.caption=3"]) == 2
    assert "need --config FILE" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["--config.batch.caption=many"])
def test_compile_override_of_wrong_type(capsys, bad):
    assert main(["compile", "--config", "configs/tiny_joint.py", "--topology", "v5e:2x2", bad]) == 2
    assert "batch.caption" in capsys.readouterr().err


def test_v4_devices_are_tensorcores_sharing_a_chip():
    from lav2_jax.train import aot

    devices = aot.topology_devices("v4:2x2x1")  # v4-8: 4 chips, each described as 2 TensorCore devices
    assert len(devices) == 8 and len({tuple(d.coords) for d in devices}) == 4
    assert len(aot.topology_devices("v5e:2x2")) == 4
    report = aot.CompileReport("v4:2x2x1", 8, {}, 2 ** 30, 0, 2 ** 30, 0, 0, 0.0, devices_per_chip=2)
    out = report.as_dict()
    assert out["peak_bytes"] == 2 * 2 ** 30  # per device
    assert out["peak_gib_per_chip"] == 4.0 and out["hbm_fraction"] == 4.0 / 32.0  # two devices per 32 GiB chip
