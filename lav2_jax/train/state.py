"""Everything the loop needs, built from a config: model, frozen and trainable parameters on their shardings,
group labels, the optimizer, state shardings and the jitted step (docs/design.md §6, §8; paper §4.2).

Trainable leaves are float32 master weights, also when they are base weights stored in bf16 (LLaVA's full
fine-tune, `param_recipe="llava-stage2"`): the optimizer state is then sized and FSDP-sharded like the base.

The frozen base comes either from `config.model.base_checkpoint` (`lav2_jax.checkpoint.load_pretrained`, restored
straight onto its shardings and referenced by path only: training checkpoints never copy it) or from a model
preset with random weights (`config.model.preset`, for tests, benchmarks and `configs/tiny_joint.py`). A random
base gets `config.model.output_scale` × the default output-head init: LLaMA's real head gives logits of several
units, the default init (std 0.02) nearly uniform ones, which only adapters could not sharpen in a short test.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from lav2_jax.checkpoint import pretrained
from lav2_jax.checkpoint.layout import read_config
from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets, registry
from lav2_jax.core.sharding import LOGICAL_RULES, logical_shardings
from lav2_jax.model.factory import abstract_params, build_model, dummy_inputs
from lav2_jax.train import optimizer as optim
from lav2_jax.train import step as step_lib


@dataclasses.dataclass
class Setup:
    model: Any
    mesh: Any
    labels: dict            # group label of every trainable leaf
    frozen: dict            # frozen parameters (sharded, never donated)
    frozen_shardings: dict
    state_shardings: dict
    tx: Any
    train_step: step_lib.TrainStep
    streams: tuple
    global_batch: dict      # stream → global batch rows
    counts: dict            # scalars per group


def _override(cfg, **kw):
    return cfg.replace(**{k: v for k, v in kw.items() if v not in (None, "")})


def model_configs(mc) -> tuple:
    """(ModelConfig, AdapterConfig, VisionConfig | None) from `config.model` (preset names + overrides)."""
    config = _override(presets.get_model(mc.preset), remat_policy=mc.get("remat_policy"),
                       weight_dtype=mc.get("weight_dtype"), dtype=mc.get("dtype"), attention=mc.get("attention"),
                       scan_layers=mc.get("scan_layers"))
    adapter, vision = config_system(mc).model_configs(mc, config)
    return config, adapter, vision


def config_system(mc):
    """The System a `config.model` section describes (`config.model.system`, default `lav2`)."""
    return registry.get(mc.get("system", "lav2"))


def _sharded_init(model, shardings, seed: int, output_scale: float, keep=None):
    """Random parameters initialised straight onto `shardings` (only the leaf paths in `keep`, when given)."""
    inputs = {k: jnp.zeros(v.shape, v.dtype) for k, v in dummy_inputs(model).items()}
    flat_sh = traverse_util.flatten_dict(shardings)
    if keep is not None:
        flat_sh = {k: v for k, v in flat_sh.items() if pg.path_str(k) in keep}

    def init(rng):
        params = nn.unbox(model.init(rng, inputs.pop("tokens"), **inputs)["params"])
        if output_scale != 1.0 and "output" in params:
            params["output"]["kernel"] = (params["output"]["kernel"] * output_scale).astype(
                params["output"]["kernel"].dtype)
        flat = traverse_util.flatten_dict(params)
        return {k: flat[k] for k in flat_sh}

    out = jax.jit(init, out_shardings=flat_sh)(jax.random.PRNGKey(seed))
    return traverse_util.unflatten_dict(out)


def load_params(model, mc, mesh, shardings):
    """All parameters of `model`: a random base (preset), or the base checkpoint's leaves restored onto their
    shardings plus fresh (identity) adapter leaves the checkpoint lacks."""
    seed = int(mc.get("seed", 0))
    if not mc.get("base_checkpoint"):
        return _sharded_init(model, shardings, seed, float(mc.get("output_scale", 1.0)))
    path = os.path.abspath(mc.base_checkpoint)
    dirs = pretrained.item_dirs(path)
    if mc.get("vision_checkpoint"):  # e.g. mPLUG-Owl stage 1: the vision model from `lav2 convert clip --layout owl`
        dirs += pretrained.item_dirs(os.path.abspath(mc.vision_checkpoint))
    restored, missing = pretrained.restore_params(model, dirs, mesh, allow_missing=True)
    fresh = _sharded_init(model, shardings, seed, 1.0, keep=set(missing)) if missing else {}
    return pg.merge(restored, fresh)


def model_from_config(mc):
    """The model: preset configs, or the base checkpoint's model/vision with the config's adapter."""
    config, adapter, vision = model_configs(mc)
    if mc.get("base_checkpoint"):
        if mc.get("scan_layers") is False:  # checkpoints hold stacked layers; restore_params reads that layout
            raise ValueError("model.scan_layers=False needs a random base: a base_checkpoint is restored stacked")
        base = read_config(mc.base_checkpoint)
        config = _override(base.model, remat_policy=mc.get("remat_policy"), weight_dtype=mc.get("weight_dtype"),
                           dtype=mc.get("dtype"))
        adapter, vision = config_system(mc).configs_over_base(mc, config, base, adapter, vision)
    return build_model(config, adapter, vision)


def build(config, mesh, model=None, abstract: bool = False) -> tuple[Setup, dict]:
    """(Setup, fresh state) for `config` on `mesh` (`model` replaces the one `config.model` describes, e.g. for
    benchmarks with a custom adapter; its base is then random). `abstract=True` allocates nothing: parameters and
    state are ShapeDtypeStructs carrying their shardings, for ahead-of-time compilation (`lav2_jax.train.aot`)."""
    mc = config.model
    model = model_from_config(mc) if model is None else model
    boxed = abstract_params(model, boxed=True)
    all_labels = pg.param_groups(boxed, config.param_recipe, model.adapter)
    shardings = logical_shardings(boxed, mesh)
    if abstract:
        params = jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                        nn.unbox(boxed), shardings)
    else:
        params = load_params(model, mc, mesh, shardings)
    trainable, frozen = pg.split(params, all_labels)
    trainable = jax.tree_util.tree_map(_master_weight, trainable)  # e.g. bf16 base weights of a full fine-tune
    labels, _ = pg.split(all_labels, all_labels)
    t_sh, f_sh = pg.split(shardings, all_labels)
    names, _ = pg.split(nn.get_partition_spec(boxed), all_labels)

    streams = step_lib.recipe_streams(config.recipe)
    gb = {s.batch_key: int(config.batch[s.batch_key]) for s in streams}
    groups_cfg = {g: dict(config.optim[g]) for g in optim.TRAINABLE_GROUPS}
    tx = optim.build_optimizer(trainable, labels, groups_cfg, int(config.total_steps),
                               global_batch=group_batches(streams, gb), logical_names=names)
    replicated = NamedSharding(mesh, P())
    opt_sh = step_lib.opt_state_shardings(jax.eval_shape(tx.init, trainable), t_sh, mesh)
    state_sh = {"step": replicated, "params": t_sh, "opt_state": opt_sh, "rng": replicated}
    init = jax.jit(lambda p: step_lib.init_state(p, tx, int(config.seed)), out_shardings=state_sh)
    state = (jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                    jax.eval_shape(init, trainable), state_sh) if abstract else init(trainable))
    fn = step_lib.make_step_fn(model, labels, tx, streams, int(config.optim.accum_steps),
                               float(config.optim.clip_norm), int(config.loss.vocab_chunk),
                               int(config.loss.get("position_chunk", 0)))
    train_step = step_lib.TrainStep(fn, mesh, state_sh, f_sh, LOGICAL_RULES)
    setup = Setup(model=model, mesh=mesh, labels=labels, frozen=frozen, frozen_shardings=f_sh,
                  state_shardings=state_sh, tx=tx, train_step=train_step, streams=streams, global_batch=gb,
                  counts=pg.count(params, all_labels))
    return setup, state


def _master_weight(x):
    """A trainable leaf as its float32 master copy (array or ShapeDtypeStruct, sharding kept)."""
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.float32:
        return x
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding)
    return x.astype(jnp.float32)


def group_batches(streams, gb: dict) -> dict:
    """Global batch of the stream that trains each group (for `lr = blr * batch / 256`)."""
    out = {g: gb[s.batch_key] for s in streams for g in s.groups}
    return {g: out.get(g, max(gb.values())) for g in optim.TRAINABLE_GROUPS}


def abstract_state(setup: Setup, state) -> dict:
    """ShapeDtypeStructs with shardings of `state` (the restore target)."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                  setup.state_shardings)
