"""`lav2 demo [--workdir DIR] [--quick] [--seed N] [--zero-shot] [--config FILE] [--systems lav2,llava,owl]`: the
method end to end.

Procedural images with captions, visual questions and text-only instructions (nothing downloaded), a language
prior and a contrastive vision tower for the frozen base (cached in DIR), paper joint training through
`lav2 train`'s engine with `configs/demo.py`, export, held-out evaluation (trained / gates off / untrained /
chance) and a report (`DIR/report.md`, `report.json`, `report.png`); see `lav2_jax.demo.run`.

`--quick` uses less data, shorter prior stages and `QUICK_TRAIN_STEPS` joint steps (the CI test).
`--zero-shot` trains with a text-only instruction stream and still measures visual-question accuracy.
`--systems lav2,llava,owl` trains the same task with each system (same data, same budget) and writes a side-by-side
table instead (`lav2_jax.demo.systems`; configs/demo_llava.py and demo_owl.py beside `--config`).
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import os

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.train import load_config

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "demo.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo_out", help="data, checkpoints, logs and the report (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a shorter run (about a minute on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the priors and training")
    p.add_argument("--zero-shot", action="store_true",
                   help="instruction stream without visual questions (captions carry all the vision)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="training config (default: the repository's "
                   "configs/demo.py)")
    p.add_argument("--systems", default="", metavar="NAMES",
                   help="comma-separated subset of lav2,llava,owl: train the task with each system on the same data "
                   "and budget and write a side-by-side table (DIR/systems.md, systems.json) instead of the report")


def run(args) -> int:
    if not os.path.isfile(args.config):
        raise UserError(f"config not found: {args.config} (pass --config path/to/configs/demo.py)")
    from lav2_jax.demo.run import config_overrides, run_demo

    try:
        config = load_config(args.config, config_overrides(args.workdir, args.quick, args.seed))
    except Exception as e:  # noqa: BLE001 - absl / ml_collections raise many types for a bad file
        raise UserError(f"{args.config}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if args.systems:
        from lav2_jax.demo.systems import parse_systems, run_systems

        if args.zero_shot:
            raise UserError("--systems compares the systems on the standard data; drop --zero-shot")
        try:
            names = parse_systems(args.systems)
        except ValueError as e:
            raise UserError(str(e)) from None
        run_systems(config, args.workdir, names, quick=args.quick, seed=args.seed,
                    config_dir=os.path.dirname(os.path.abspath(args.config)))
        return 0
    run_demo(config, args.workdir, quick=args.quick, seed=args.seed, zero_shot=args.zero_shot,
             display=args.workdir)
    return 0
