"""`lav2 compile`: ahead-of-time compile for a TPU topology and print per-chip memory (docs/design.md §8.2).

    lav2 compile --config configs/joint_7b.py --topology v5e:2x4            # the training step of a train config
    lav2 compile --model llama1-7b --adapter release-bias --topology v5e:2x4 --batch 8 --seq 512   # a forward pass

Runs on a CPU host with libtpu installed (`pip install -e '.[tpu]'`); nothing is allocated or run. With `--config`,
the mesh, batch sizes, sequence lengths, recipe, optimizer and remat policy come from the training config
(`--mesh` overrides its mesh, `--batch` the global batch of every stream of its recipe, `--remat` its remat
policy, `--accum-steps` its micro-batches, and any `--config.<key>=<value>` its fields, as in `lav2 train`), e.g.

    lav2 compile --config configs/joint_7b.py --topology v5e:2x4 --config.batch.instruction=64
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import json

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.train import accept_config_overrides, load_config
from lav2_jax.core import presets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="a `lav2 train` config file: compile its training step")
    p.add_argument("--model", default=None, help="model preset (lav2_jax.core.presets): compile a forward pass")
    p.add_argument("--adapter", default="none", help="adapter preset")
    p.add_argument("--vision", default=None, help="vision preset for visual adapters (default vit-l-14; the "
                   "system's tower for llava / owl presets, as in `lav2 info`)")
    p.add_argument("--topology", required=True, help="TPU topology name, e.g. v5e:2x4, v4:2x2x2, v5p:2x2x4")
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor sizes (one may be -1 = fill); default 1,-1,1 "
                   "or the config's mesh")
    p.add_argument("--batch", type=int, default=None, help="global batch size (default 8; with --config: the rows of "
                   "every stream of the recipe, i.e. each config.batch.<stream>)")
    p.add_argument("--seq", type=int, default=None, help="sequence length of --model (default 512); with --config "
                   "set --config.data.<stream>.max_len instead")
    p.add_argument("--weight-dtype", default=None, help="frozen weight dtype (default: the preset's, bfloat16)")
    p.add_argument("--remat", default=None, help="remat policy for the scanned layers (with --config: overrides "
                   "config.model.remat_policy)")
    p.add_argument("--accum-steps", type=int, default=None,
                   help="with --config: gradient-accumulation micro-batches (overrides config.optim.accum_steps)")
    p.add_argument("--attention", default=None, choices=("xla", "flash"),
                   help="attention implementation (flash: the Pallas TPU splash kernel); default: the config's")
    p.add_argument("--json", action="store_true", help="print JSON")
    accept_config_overrides(p)  # with --config: --config.<key>=<value> overrides, as in `lav2 train`


def _mesh_sizes(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise UserError(f"--mesh {text!r}: expected three comma-separated sizes data,fsdp,tensor (e.g. 1,-1,1)")
    return sizes  # type: ignore[return-value]


def run(args) -> int:
    if (args.config is None) == (args.model is None):
        raise UserError("give either --config FILE (a training step) or --model PRESET (a forward pass)")
    if getattr(args, "overrides", None) and args.config is None:
        raise UserError(f"unknown arguments {args.overrides}: --config.<key>=<value> overrides need --config FILE")
    out = _train_step(args) if args.config else _forward(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    gib = 2 ** 30
    chips = out["num_devices"] // out["devices_per_chip"]
    print(f"{out['what']} on {out['topology']} ({chips} chips, mesh {out['mesh']})")
    for name in ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "peak_bytes"):
        print(f"  {name.replace('_bytes', ''):<10} {out[name] / gib:10.3f} GiB per "
              f"{'chip' if out['devices_per_chip'] == 1 else 'device'}")
    if out["devices_per_chip"] > 1:
        print(f"  per chip   {out['peak_gib_per_chip']:10.3f} GiB ({out['devices_per_chip']} devices, one per "
              "TensorCore, share a chip's HBM)")
    if out["hbm_fraction"] is not None:
        print(f"  hbm        {100 * out['hbm_fraction']:9.1f} % of a chip's HBM")
    print(f"  flops      compiled {out['compiled_flops']:.3e} (whole program, every loop iteration), analytic "
          f"{out['analytic_flops']:.3e} (6N: {out['flops_6n']:.3e}), ratio {out['flop_ratio']:.3f}")
    if out["pallas_calls"]:
        print(f"  ({out['pallas_calls']} Pallas kernel calls: their FLOPs are not in the compiled count)")
    if out.get("guessed_loops"):
        print(f"  ({out['guessed_loops']} loops with an unrecognised counter, counted by their bound: the compiled "
              "count may be high)")
    print(f"  xla flops  {out['xla_flops']:.3e} (XLA's cost analysis: a scanned body counted once)")
    return 0


def _train_step(args) -> dict:
    from lav2_jax.train import aot
    from lav2_jax.train.step import recipe_streams

    config, mesh = train_config(args)
    report = aot.compile_report(args.topology, mesh, aot.compile_train_step(config, mesh))
    batches = {s.batch_key: int(config.batch[s.batch_key]) for s in recipe_streams(config.recipe)}
    what = f"{config.model.preset} + {config.model.adapter}: train step ({config.recipe}, batch {batches})"
    out = dict(report.as_dict(), program="train_step", what=what, config=args.config,
               remat=config.model.remat_policy, accum_steps=int(config.optim.accum_steps))
    return _with_ratio(out, aot.train_step_analytic(config))


def train_config(args) -> tuple:
    """(training config, mesh) of `lav2 compile --config ...`: the file, its overrides and the command's flags."""
    from lav2_jax.train import aot
    from lav2_jax.train.step import recipe_streams

    try:
        config = aot.load_config(args.config)
        if getattr(args, "overrides", None):
            config = _overridden(args.config, args.overrides)
        if args.attention:
            config.model.attention = args.attention
        if args.remat:
            config.model.remat_policy = args.remat
        if args.accum_steps:
            config.optim.accum_steps = args.accum_steps
        if args.seq is not None:
            raise ValueError(f"--seq {args.seq} is for --model; with --config set each stream's length with "
                             "--config.data.<stream>.max_len=N")
        if args.batch is not None:  # the global batch of every stream the recipe trains on
            for stream in recipe_streams(config.recipe):
                config.batch[stream.batch_key] = args.batch
        m = config.mesh
        data, fsdp, tensor = _mesh_sizes(args.mesh) if args.mesh else (m.data, m.fsdp, m.tensor)
        mesh = aot.topology_mesh(args.topology, data, fsdp, tensor)
    except ValueError as e:
        raise UserError(str(e)) from None
    return config, mesh


def _overridden(path: str, overrides: list[str]):
    try:
        return load_config(path, overrides)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - absl / ml_collections raise many types for a bad flag
        raise UserError(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _with_ratio(out: dict, analytic: dict) -> dict:
    out.update(analytic_flops=analytic["analytic_flops"], flops_6n=analytic["flops_6n"],
               flop_ratio=out["compiled_flops"] / analytic["analytic_flops"] if analytic["analytic_flops"] else None)
    return out


def _forward(args) -> dict:
    from lav2_jax.train import aot
    from lav2_jax.model.factory import build_model

    data, fsdp, tensor = _mesh_sizes(args.mesh or "1,-1,1")
    args.batch, args.seq = args.batch or 8, args.seq or 512
    try:
        config = presets.get_model(args.model)
        config = config.replace(**{k: v for k, v in (("weight_dtype", args.weight_dtype),
                                                      ("remat_policy", args.remat),
                                                      ("attention", args.attention)) if v})
        adapter = presets.get_adapter(args.adapter)
        vision_name = args.vision or presets.default_vision(args.adapter)
        vision = presets.get_vision(vision_name) if adapter.has_visual or adapter.splice is not None else None
        model = build_model(config, adapter, vision)
        mesh = aot.topology_mesh(args.topology, data, fsdp, tensor)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise UserError(f"--batch {args.batch} does not divide over data×fsdp = "
                        f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
    from lav2_jax.model.flops import analytic_forward_flops

    report = aot.compile_report(args.topology, mesh, aot.compile_forward(model, mesh, args.batch, args.seq))
    what = f"{args.model} + {args.adapter}: forward, batch {args.batch} × {args.seq} tokens"
    out = dict(report.as_dict(), program="forward", what=what, model=args.model, adapter=args.adapter,
               batch=args.batch, seq=args.seq)
    return _with_ratio(out, analytic_forward_flops(model, args.batch, args.seq))
