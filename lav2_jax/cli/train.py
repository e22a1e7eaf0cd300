"""`lav2 train --config configs/<name>.py --workdir DIR [--config.key=value ...]`.

The config file is an ml_collections config (`get_config()`), overridden with absl-style flags as in the Flax
examples, e.g. `--config.total_steps=100 --config.mesh.fsdp=8`. Checkpoints, TensorBoard events and
`metrics.jsonl` go under DIR; running the same command again resumes from the newest readable checkpoint there
(an unreadable newer one is reported and moved aside), `--resume-from STEP` from that step. An override of a field
the config lacks, or a value of the wrong type, is a one-line error naming the field and the closest valid ones;
so is a `config.data.tokenizer` that is missing, unreadable or has more pieces than the model's vocab_size, and a
`config.param_recipe` no system defines (`lav2 train --help` and `lav2 info --recipes` list them per system).
Exit status 0 also after a SIGTERM (a checkpoint was written: rerun to resume), 3 on a non-finite loss, 4 when a
data worker process died (one line naming the step and the checkpoint to resume from).
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import sys

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.info import recipe_listing
from lav2_jax.cli.overrides import check_overrides
from lav2_jax.core import registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file, e.g. configs/tiny_joint.py")
    p.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events and metrics.jsonl go here")
    p.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="resume from this checkpoint step (default: the newest readable one); newer steps are "
                        "moved aside to <workdir>/discarded_checkpoints")
    accept_config_overrides(p)
    format_help = p.format_help

    def format_help_with_recipes():  # the listing loads every system (jax): only when help is asked for
        return format_help() + "\ntraining recipes (config.param_recipe), by system:\n" + recipe_listing() + "\n"

    p.format_help = format_help_with_recipes


def accept_config_overrides(p: argparse.ArgumentParser) -> None:
    """The rest of argv (absl `--config.<key>=<value>` flags for ml_collections) goes to `args.overrides`."""
    p.epilog = "Any further --config.<key>=<value> flags override fields of the config."
    parse = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = parse(args, namespace)
        ns.overrides = list(getattr(ns, "overrides", None) or []) + list(rest)
        return ns, []

    p.parse_known_args = parse_known_args


def load_config(path: str, overrides: list[str]):
    """The ml_collections config of file `path` with `--config.key=value` overrides applied."""
    from absl import flags
    from ml_collections import config_flags

    bad = [o for o in overrides if o.startswith("-") and not o.lstrip("-").startswith("config.")]
    if bad:
        raise ValueError(f"unknown arguments {bad}: overrides look like --config.key=value")
    if overrides:
        check_overrides(load_config(path, []), overrides)
    argv = ["lav2 train", f"--config={path}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def run(args) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - absl / ml_collections raise many types for a bad flag or file
        raise UserError(f"{args.config}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if config.param_recipe not in registry.recipes():
        known = "; ".join(f"{n}: {', '.join(registry.recipes(n))}" for n in registry.names())
        raise UserError(f"{args.config}: config.param_recipe={config.param_recipe!r} is no training recipe; "
                        f"known, by system: {known}")
    from lav2_jax.checkpoint.items import CheckpointReadError
    from lav2_jax.data.tokenizer import TokenizerError
    from lav2_jax.train.data import DataWorkerError
    from lav2_jax.train.trainer import NonFiniteError, train

    try:
        out = train(config, args.workdir, resume_from=getattr(args, "resume_from", None))
    except (CheckpointReadError, TokenizerError) as e:
        raise UserError(str(e)) from None
    except NonFiniteError as e:
        print(f"lav2 train: stopped: {e}", flush=True)
        return 3
    except DataWorkerError as e:
        print(f"lav2 train: stopped: {e}", file=sys.stderr, flush=True)
        return 4
    if out["preempted"]:
        print(f"lav2 train: preempted at step {out['step']}; rerun the same command to resume", flush=True)
    else:
        print(f"lav2 train: done at step {out['step']}; checkpoints in {out['checkpoint_dir']}", flush=True)
    return 0
