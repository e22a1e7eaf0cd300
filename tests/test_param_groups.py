"""The ordered regex table of parameter groups (DESIGN.md §2)."""

import pytest
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets
from lav2_jax.model.factory import abstract_params, build_model
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
