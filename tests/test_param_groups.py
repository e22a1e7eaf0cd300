"""Parameter groups (docs/design.md §6): each system's named recipes (ordered rules) and the engine that applies them;
the recipes label every parameter of every built-in model exactly as the former 11-column table did."""

import importlib.util
import re

import pytest
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets, registry
from lav2_jax.model.factory import abstract_params, build_model, unscanned
from lav2_jax.train import state as state_lib
from model_utils import TINY

VISION = presets.get_vision("tiny")


def labels_of(adapter_name, recipe):
    model = build_model(TINY, presets.tiny_adapter(adapter_name), VISION if adapter_name != "chat65b" else None)
    shapes = abstract_params(model)
    flat = traverse_util.flatten_dict(pg.param_groups(shapes, recipe, model.adapter))
    return {"/".join(k): v for k, v in flat.items()}


EXPECTED = {
    # path: (paper-joint, release-pretrain, release-finetune)
    "connector/clip_proj/kernel": ("caption", "caption", "frozen"),
    "connector/visual_query": ("caption", "caption", "frozen"),
    "clip/conv1/kernel": ("frozen", "frozen", "frozen"),
    "clip/ln_post/scale": ("frozen", "frozen", "frozen"),
    "adapter_query": ("instruction", "caption", "frozen"),
    "layers/attention/gate": ("instruction", "caption", "frozen"),
    "layers/attention/wq/bias": ("instruction", "frozen", "instruction"),
    "layers/feed_forward/w2/bias": ("instruction", "frozen", "instruction"),
    "layers/attention_norm/scale": ("instruction", "frozen", "instruction"),
    "norm/scale": ("instruction", "frozen", "instruction"),
    "layers/attention/wq/kernel": ("frozen", "frozen", "frozen"),
    "tok_embeddings/embedding": ("frozen", "frozen", "frozen"),
    "output/kernel": ("frozen", "frozen", "frozen"),
}


@pytest.mark.parametrize("col,recipe", enumerate(["paper-joint", "release-pretrain", "release-finetune"]))
def test_table_rows(col, recipe):
    got = labels_of("release-lora-bias", recipe)
    for path, groups in EXPECTED.items():
        assert got[path] == groups[col], (path, recipe)
    lora = {p: g for p, g in got.items() if "lora_" in p}
    assert lora and set(lora.values()) == {"frozen" if recipe == "release-pretrain" else "instruction"}
    assert got["layers/attention/new_gate"] == ("caption" if recipe == "release-pretrain" else
                                                "instruction" if recipe == "paper-joint" else "frozen")


def test_paper_visual_gate_is_caption_and_scales_instruction():
    got = labels_of("paper", "paper-joint")
    assert got["visual_gate"] == "caption"
    assert got["layers/attention/wk/scale"] == "instruction"
    assert got["layers/feed_forward/w1/scale"] == "instruction"


def test_chat65b_trains_norms_biases_scales_only():
    got = labels_of("chat65b", "chat65b")
    trainable = {p for p, g in got.items() if g != "frozen"}
    assert trainable and all(p.endswith(("bias", "scale")) for p in trainable)
    assert all(g != "caption" for g in got.values())


def test_norms_frozen_without_norm_tuning():
    adapter = presets.tiny_adapter("release-bias").replace(norm_tuning=False)
    shapes = abstract_params(build_model(TINY, adapter, VISION))
    flat = traverse_util.flatten_dict(pg.param_groups(shapes, "release-finetune", adapter))
    assert flat[("norm", "scale")] == "frozen"
    assert flat[("layers", "attention", "wq", "bias")] == "instruction"


def test_split_merge_round_trip_and_disjoint():
    model = build_model(TINY, presets.tiny_adapter("paper"), VISION)
    shapes = abstract_params(model)
    labels = pg.param_groups(shapes, "paper-joint", model.adapter)
    cap, rest = pg.split(shapes, labels, ["caption"])
    ins, frozen = pg.split(rest, pg.param_groups(rest, "paper-joint", model.adapter), ["instruction"])
    flat = [set(traverse_util.flatten_dict(t)) for t in (cap, ins, frozen)]
    assert not (flat[0] & flat[1]) and not (flat[1] & flat[2]) and not (flat[0] & flat[2])
    assert traverse_util.flatten_dict(pg.merge(cap, ins, frozen)).keys() == traverse_util.flatten_dict(shapes).keys()
    with pytest.raises(ValueError, match="more than one tree"):
        pg.merge(cap, cap)


def test_unknown_recipe_is_named():
    with pytest.raises(ValueError, match="unknown recipe 'bogus'"):
        pg.label_for("norm/scale", "bogus")


# ---- the former table, kept as the reference the per-system recipes must reproduce label for label ----
_C, _I, _F = "caption", "instruction", "frozen"
OLD_RECIPES = ("paper-joint", "release-pretrain", "release-finetune", "chat65b", "all-adapters", "llava-stage1",
               "llava-stage2", "llava-lora", "owl-stage1", "owl-stage2", "owl-stage2-abstractor")
OLD_NORM_TUNING_RECIPES = OLD_RECIPES[:5]
OLD_NORM_PATTERN = r"(^|/)(attention_norm|ffn_norm|norm)/scale$"
OLD_LLM_PATTERN = r"^(tok_embeddings|layers(_\d+)?|norm|output)/"
OLD_GROUP_TABLE = (
    (r"^clip/",                              (_F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F)),
    (r"^owl_vision/",                        (_F, _F, _F, _F, _F, _F, _F, _F, _C, _F, _F)),
    (r"^abstractor/",                        (_F, _F, _F, _F, _I, _F, _F, _F, _C, _F, _C)),
    (r"^mm_projector/",                      (_F, _F, _F, _F, _I, _C, _C, _C, _F, _F, _F)),
    (r"^connector/",                         (_C, _C, _F, _F, _I, _F, _F, _F, _F, _F, _F)),
    (r"^visual_gate$",                       (_C, _C, _F, _F, _I, _F, _F, _F, _F, _F, _F)),
    (r"^adapter_query$",                     (_I, _C, _F, _F, _I, _F, _F, _F, _F, _F, _F)),
    (r"/attention/(gate|new_gate)$",         (_I, _C, _F, _F, _I, _F, _F, _F, _F, _F, _F)),
    (r"/lora_[ab]$",                         (_I, _F, _I, _F, _I, _F, _I, _I, _F, _I, _I)),
    (OLD_NORM_PATTERN,                       (_I, _F, _I, _I, _I, _F, _I, _F, _F, _F, _F)),
    (r"/w[qkvo123]/(bias|scale)$",           (_I, _F, _I, _I, _I, _F, _I, _F, _F, _F, _F)),
    (OLD_LLM_PATTERN,                        (_F, _F, _F, _F, _F, _F, _I, _F, _F, _F, _F)),
    (r".*",                                  (_F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F)),
)


def old_label(path, recipe, norm_tuning):
    if not norm_tuning and recipe in OLD_NORM_TUNING_RECIPES and re.search(OLD_NORM_PATTERN, path):
        return _F
    col = OLD_RECIPES.index(recipe)
    return next(row[col] for pattern, row in OLD_GROUP_TABLE if re.search(pattern, path))


def _config(name, lora_rank):
    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.model.lora.update(rank=lora_rank, alpha=2.0 * lora_rank)
    return c


def _builtin_paths() -> dict:
    """{model name: parameter paths} of the tiny models of every built-in system (stacked and unstacked layers)."""
    models = {name: build_model(TINY, presets.tiny_adapter(name), VISION)
              for name in ("paper", "release-bias", "release-lora-bias")}
    models["chat65b"] = build_model(TINY, presets.tiny_adapter("chat65b"))
    models.update({name: build_model(TINY, presets.get_adapter(name)) for name in ("lora", "none")})
    models["paper-unscanned"] = unscanned(models["paper"])
    for name in ("tiny_llava", "tiny_owl"):
        mc = _config(name, lora_rank=4).model
        mc.lora.targets = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
        models[name] = state_lib.model_from_config(mc)
    return {name: [pg.path_str(k) for k in traverse_util.flatten_dict(abstract_params(m))]
            for name, m in models.items()}


def test_recipes_belong_to_their_systems():
    assert list(registry.recipes()) == list(OLD_RECIPES)
    assert {n: list(registry.recipes(n)) for n in registry.names()[:3]} == {
        "lav2": list(OLD_RECIPES[:5]), "llava": list(OLD_RECIPES[5:8]), "owl": list(OLD_RECIPES[8:])}
    assert [r for r, rec in registry.recipes().items() if rec.norm_tuning] == list(OLD_NORM_TUNING_RECIPES)
    assert [r for r, rec in registry.recipes().items() if rec.full_finetune] == ["llava-stage2"]


def test_recipes_label_every_builtin_parameter_as_the_former_table():
    paths = _builtin_paths()
    assert {p.split("/")[0] for ps in paths.values() for p in ps} >= {
        "clip", "owl_vision", "abstractor", "mm_projector", "connector", "visual_gate", "adapter_query",
        "tok_embeddings", "layers", "layers_0", "norm", "output"}
    checked = 0
    for name, ps in paths.items():
        for recipe in OLD_RECIPES:
            for norm_tuning in (True, False):
                for path in ps:
                    assert pg.label_for(path, recipe, norm_tuning) == old_label(path, recipe, norm_tuning), (
                        name, recipe, norm_tuning, path)
                    checked += 1
    assert checked > 5000
