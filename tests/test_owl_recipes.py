"""mPLUG-Owl recipes (docs/design.md §5.4) on `configs/tiny_owl.py`: each trains exactly its groups.

Proves: `owl-stage1` labels every `owl_vision/...` and `abstractor/...` leaf trainable (the vision tower trains:
frozen vision is not assumed) and every LLM leaf frozen, and one real train step changes vision and abstractor
leaves; `owl-stage2` trains only the LoRA factors of the configured targets (wq, wv by default; others on request);
`owl-stage2-abstractor` adds the abstractor, and its step leaves the vision model and the LLM bit-identical (they
are not even in the train state) while LoRA-B and the abstractor move. The 7B configs carry the published numbers.
"""

import importlib.util

import jax
import numpy as np

from lav2_jax.core import param_groups as pg
from lav2_jax.model.factory import abstract_params
from lav2_jax.core.sharding import make_mesh
from lav2_jax.train import state as state_lib
from lav2_jax.train.data import make_data
from lav2_jax.train.mesh import global_batch
from flax import traverse_util


def _flat(tree) -> dict:
    """{"a/b/c": leaf} of a nested dict."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _config(name="tiny_owl"):
    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _tiny(recipe, rank=0, targets=("wq", "wv")):
    c = _config()
    c.param_recipe = recipe
    c.model.lora.update(rank=rank, alpha=4.0 * rank, targets=targets)
    return c


def _labels(config):
    model = state_lib.model_from_config(config.model)
    shapes = abstract_params(model)
    return _flat(pg.param_groups(shapes, config.param_recipe, model.adapter))


def _trained(labels):
    return {k for k, v in labels.items() if v != pg.F}


def test_labels_of_each_recipe():
    s1 = _labels(_tiny("owl-stage1"))
    assert _trained(s1) == {k for k in s1 if k.startswith(("owl_vision/", "abstractor/"))}
    assert any(k.startswith("owl_vision/layers/self_attn/query_key_value") for k in _trained(s1))
    assert {s1[k] for k in _trained(s1)} == {pg.C}
    s2 = _labels(_tiny("owl-stage2", rank=4))
    assert _trained(s2) == {f"layers/attention/{w}/lora_{ab}" for w in ("wq", "wv") for ab in "ab"}
    s2k = _labels(_tiny("owl-stage2", rank=4, targets=("wq", "wk", "wv", "wo")))
    assert len(_trained(s2k)) == 8
    s2a = _labels(_tiny("owl-stage2-abstractor", rank=4))
    assert _trained(s2a) == _trained(s2) | {k for k in s2a if k.startswith("abstractor/")}
    assert {s2a[k] for k in _trained(s2a) if k.startswith("abstractor/")} == {pg.C}


def test_stage1_step_trains_the_vision_tower():
    """One compiled step (seconds of CPU each): stage 1, where frozen vision must not be assumed. That a step
    honours the labels of the other recipes is the train step's own contract (tests/test_train_step.py)."""
    recipe = "owl-stage1"
    config = _tiny(recipe)
    config.optim.caption.warmup_steps = 0  # lr > 0 on the first step
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(config, mesh)
    before = {k: np.asarray(v) for k, v in _flat(jax.device_get(state["params"])).items()}
    frozen = set(_flat(setup.frozen))
    batch = global_batch(next(make_data(config, setup)), mesh)
    assert (np.asarray(batch["train"]["tokens"]) == -1).sum() % 5 == 0  # 4 queries + vit_eos per image
    state, metrics = setup.train_step(state, setup.frozen, batch)
    after = {k: np.asarray(v) for k, v in _flat(jax.device_get(state["params"])).items()}
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert np.isfinite(float(metrics["loss/train"]))
    assert any(k.startswith("abstractor/layers/") for k in moved)
    assert set(before) == {k for k in before if k.startswith(("owl_vision/", "abstractor/"))}
    assert any(k.startswith("owl_vision/layers/") for k in moved)  # the vision tower trains in stage 1
    assert not any(k.startswith(("owl_vision/", "abstractor/")) for k in frozen)
    assert any(k.startswith("layers/") for k in frozen)


def test_7b_configs_carry_the_published_numbers():
    s1, s2 = _config("owl_stage1_7b"), _config("owl_stage2_7b")
    assert (s1.param_recipe, s1.optim.caption.base_lr, s1.total_steps) == ("owl-stage1", 1e-4, 50000)
    assert (s2.param_recipe, s2.optim.instruction.base_lr, s2.batch.train, s2.total_steps) == (
        "owl-stage2", 2e-5, 256, 4236)
    assert (s2.model.lora.rank, s2.model.lora.alpha, s2.model.lora.dropout, tuple(s2.model.lora.targets)) == (
        8, 32.0, 0.05, ("wq", "wv"))
    assert (s2.optim.instruction.warmup_steps, s2.optim.instruction.weight_decay, s2.optim.clip_norm) == (
        50, 1e-4, 1.0)
    model = state_lib.model_from_config(s2.model)
    assert model.adapter.splice.n_tokens == 65 and model.vision.layer_norm_eps == 1e-6
    assert model.adapter.splice.abstractor.mlp_dim == 2816


def test_info_counts_at_7b():
    """`lav2 info` for the Owl recipes at 7B, against counts derived by hand (the paper rounds to 7.2B)."""
    from lav2_jax.cli.info import param_report

    D, W, M, I, P, T = 4096, 1024, 4096, 2816, 14, 257
    vit_layer = 2 * 2 * W + (3 * W * W + 3 * W) + (W * W + W) + (W * M + M) + (M * W + W)
    vit = P * P * 3 * W + W + T * W + 2 * 2 * W + 24 * vit_layer
    abs_layer = 3 * 2 * W + 4 * (W * W + W) + 2 * (W * I + I) + 2 * I + (I * W + W)
    abstractor = 64 * W + 6 * abs_layer + (W * D + D) + D
    lora = 32 * 2 * (D * 8 + 8 * D)  # r 8 on wq and wv
    r1 = param_report("llama1-7b", "owl")
    assert (r1["clip"], r1["added_by_adapter"]) == (vit, abstractor) == (303_179_776, 81_473_536)
    assert r1["total"] == 6_738_415_616 + vit + abstractor == 7_123_068_928
    assert r1["recipes"]["owl-stage1"] == {"total": r1["total"], "caption": vit + abstractor, "instruction": 0,
                                           "frozen": 6_738_415_616}
    r2 = param_report("llama1-7b", "owl-lora")
    assert r2["recipes"]["owl-stage2"]["instruction"] == lora == 4_194_304
    assert r2["recipes"]["owl-stage2"]["caption"] == 0
    assert r2["recipes"]["owl-stage2-abstractor"]["caption"] == abstractor
