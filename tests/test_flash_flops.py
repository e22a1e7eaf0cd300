"""Pallas splash attention (interpreted on CPU, compiled for a TPU slice) and the FLOP report of `lav2 compile`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.train import aot
from lav2_jax.core import presets
from lav2_jax.cli.main import main
from lav2_jax.model.flops import analytic_forward_flops
from lav2_jax.model.factory import build_model
from lav2_jax.model.flash import splash_attention
from tests import attention_reference as ref


def test_splash_kernel_matches_reference_attention_with_segments():
    """Against attention written from its definition (`tests.attention_reference`, float64), on the real tokens of
    a row with two samples and a padding tail; the padding rows' outputs are finite too."""
    B, T, K, G, H = 1, 128, 2, 2, 32
    r = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(r[0], (B, T, K, G, H)) * H ** -0.5
    k, v = jax.random.normal(r[1], (B, T, K, H)), jax.random.normal(r[2], (B, T, K, H))
    seg = jnp.asarray([[1] * 50 + [2] * 60 + [0] * 18], jnp.int32)
    mask, real = ref.allowed(seg), np.asarray(seg) != 0
    out = splash_attention(q, k, v, seg, interpret=True)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.asarray(out)[real], ref.attention(q, k, v, mask)[real], atol=1e-5, rtol=0)
    w = jax.random.normal(r[3], (B, T, K, G, H)) * real[:, :, None, None, None]  # the loss reads real tokens only
    got = jax.grad(lambda *a: (splash_attention(*a, seg, interpret=True) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for g, e in zip(got, ref.attention_vjp(q, k, v, mask, w)):  # max error ~5e-6 (dq entries up to ~12)
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=0)


def test_compiled_flops_count_every_scanned_layer():
    """XLA's cost analysis counts a scanned body once; the HLO count equals the unrolled program's."""
    mesh = aot.topology_mesh("v5e:2x2", data=1, fsdp=-1, tensor=1)
    cfg = presets.get_model("tiny").replace(n_layers=3, weight_dtype="bfloat16", dtype="bfloat16")
    reports = {}
    for scan in (True, False):
        model = build_model(cfg.replace(scan_layers=scan), presets.get_adapter("chat65b"))
        reports[scan] = aot.compile_report("v5e:2x2", mesh, aot.compile_forward(model, mesh, 4, 128))
    assert reports[True].compiled_flops == pytest.approx(reports[False].compiled_flops, rel=1e-9)
    assert reports[True].xla_flops < 0.7 * reports[False].xla_flops  # the scanned cost analysis misses 2 layers
    analytic = analytic_forward_flops(model, 4, 128)["analytic_flops"]
    assert 0.95 <= reports[True].compiled_flops / analytic <= 1.05


def test_flash_train_step_compiles_for_v5e_and_reports_flops(capsys):
    config = aot.load_config("configs/tiny_joint.py")
    config.model.attention = "flash"
    config.data.seq_len = 128
    mesh = aot.topology_mesh("v5e:2x2", data=2, fsdp=2, tensor=1)
    report = aot.compile_report("v5e:2x2", mesh, aot.compile_train_step(config, mesh))
    assert report.pallas_calls > 0 and report.compiled_flops > 0  # the splash kernel is in the TPU program

    assert main(["compile", "--config", "configs/tiny_joint.py", "--topology", "v5e:2x2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pallas_calls"] == 0
    assert 0.9 <= out["flop_ratio"] <= 1.15  # no remat in tiny_joint: compiled matmuls ≈ model FLOPs
    assert out["compiled_flops"] == pytest.approx(out["flop_ratio"] * out["analytic_flops"])
    assert out["peak_gib_per_chip"] == pytest.approx(out["peak_bytes"] / 2 ** 30)
    assert out["hbm_fraction"] == pytest.approx(out["peak_gib_per_chip"] / 16.0)  # v5e: 16 GiB per chip
