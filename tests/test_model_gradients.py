"""Gradients reach every trainable group (finite, non-zero); frozen weights are not differentiated at all.

The frozen-base guarantee is checked on the state and the step the trainer builds (`lav2_jax.train.state.build`,
allocated abstractly): the trainable tree, the frozen tree and the optimizer state against a per-recipe list of
trainable leaves written out below (from the recipes' definitions, not from `lav2_jax.core.param_groups`), and the traced
train step for any matrix product that yields a frozen weight's gradient."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.extend import core as jcore

from lav2_jax.cli.train import load_config
from lav2_jax.core import param_groups as pg
from lav2_jax.core.sharding import LOGICAL_RULES, make_mesh
from lav2_jax.train import state as state_lib
from model_utils import perturb_adapters, random_tokens, tiny, visual_kwargs
from train_utils import ROOT


def ce_loss(model, params, tokens, **kw):
    logits = model.apply({"params": params}, tokens, **kw)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


@pytest.mark.parametrize("adapter_name,recipe", [("paper", "paper-joint"), ("release-lora-bias", "release-pretrain"),
                                                 ("release-lora-bias", "release-finetune"), ("chat65b", "chat65b")])
def test_group_gradients(adapter_name, recipe):
    model, params = tiny(adapter_name)
    params = perturb_adapters(params, scale=0.3)  # at init zero gates/LoRA-B give prompts/LoRA-A zero gradients
    labels = pg.param_groups(params, recipe, model.adapter)
    trainable, frozen = pg.split(params, labels)
    tokens = random_tokens(4, 10, model.config.vocab_size)
    kw = visual_kwargs(model, 4)

    grads = jax.jit(jax.grad(lambda t, f: ce_loss(model, pg.merge(t, f), tokens, **kw)))(trainable, frozen)
    flat_grads = traverse_util.flatten_dict(grads)
    flat_labels = traverse_util.flatten_dict(labels)
    # the differentiated tree is exactly the trainable leaves: no frozen leaf gets a gradient
    assert set(flat_grads) == {k for k, g in flat_labels.items() if g != "frozen"}
    groups = {flat_labels[k] for k in flat_grads}
    assert groups, "recipe has trainable parameters"
    for path, g in flat_grads.items():
        assert np.all(np.isfinite(g)), path
        assert float(jnp.abs(g).max()) > 0, f"zero gradient for {'/'.join(path)}"


# ---- the frozen base: a hand-written list of trainable leaves per recipe -----------------------------------------

LINEARS = ("attention/wq", "attention/wk", "attention/wv", "attention/wo", "feed_forward/w1", "feed_forward/w2",
           "feed_forward/w3")
LLAMA_NORMS = ("layers/attention_norm/scale", "layers/ffn_norm/scale", "norm/scale")


def _on_linears(path, *names, linears=LINEARS):
    """`path` is leaf `names` of one of the LLaMA linears `layers/<linear>/<name>`."""
    return any(path == f"layers/{w}/{n}" for w in linears for n in names)


# case: (config file, overrides, {group: predicate on the `/`-joined leaf path}); every other leaf is frozen
CASES = {
    # paper §4.2: caption = visual projection (connector) + early visual gates; instruction = adapter prompts and
    # their gates, norms, linear biases and scales. LLaMA kernels, embeddings, head and CLIP stay frozen.
    "paper-joint": ("tiny_joint.py", (), {
        "caption": lambda p: p.startswith("connector/") or p == "visual_gate",
        "instruction": lambda p: (p in ("adapter_query", "layers/attention/gate") + LLAMA_NORMS
                                  or _on_linears(p, "bias", "scale"))}),
    # released stage 1: connector, adapter prompts and every gate
    "release-pretrain": ("tiny_joint.py", ("--config.param_recipe=release-pretrain", "--config.recipe=pretrain",
                                           "--config.model.adapter=release-lora-bias"), {
        "caption": lambda p: p.startswith("connector/") or p in (
            "adapter_query", "layers/attention/gate", "layers/attention/new_gate"),
        "instruction": lambda p: False}),
    # released stage 2: norms, biases, LoRA of the LLaMA linears
    "release-finetune": ("tiny_joint.py", ("--config.param_recipe=release-finetune", "--config.recipe=finetune",
                                           "--config.model.adapter=release-lora-bias"), {
        "caption": lambda p: False,
        "instruction": lambda p: p in LLAMA_NORMS or _on_linears(p, "bias", "lora_a", "lora_b")}),
    # released 65B chat model: norms, biases, scales
    "chat65b": ("tiny_joint.py", ("--config.param_recipe=chat65b", "--config.recipe=finetune",
                                  "--config.model.adapter=chat65b"), {
        "caption": lambda p: False,
        "instruction": lambda p: p in LLAMA_NORMS or _on_linears(p, "bias", "scale")}),
    # LLaVA stage 1: the projector alone; stage 2: the projector + every LLM weight; the CLIP tower never
    "llava-stage1": ("tiny_llava.py", ("--config.param_recipe=llava-stage1",), {
        "caption": lambda p: p.startswith("mm_projector/"), "instruction": lambda p: False}),
    "llava-stage2": ("tiny_llava.py", (), {
        "caption": lambda p: p.startswith("mm_projector/"),
        "instruction": lambda p: p in ("tok_embeddings/embedding", "output/kernel") + LLAMA_NORMS
        or _on_linears(p, "kernel")}),
    # mPLUG-Owl stage 1: vision model + abstractor, the LLM frozen; stage 2: LoRA on wq/wv only (rank 6: no LoRA
    # matrix shares a frozen matrix's shape, see `test_no_gradient_is_computed_for_a_frozen_weight`)
    "owl-stage1": ("tiny_owl.py", (), {
        "caption": lambda p: p.startswith(("owl_vision/", "abstractor/")), "instruction": lambda p: False}),
    "owl-stage2": ("tiny_owl.py", ("--config.param_recipe=owl-stage2", "--config.model.lora.rank=6"), {
        "caption": lambda p: False,
        "instruction": lambda p: _on_linears(p, "lora_a", "lora_b", linears=("attention/wq", "attention/wv"))}),
}


def _paths(tree) -> dict:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _build(case):
    file, overrides, _ = CASES[case]
    config = load_config(os.path.join(ROOT, "configs", file), list(overrides))
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(config, mesh, abstract=True)  # shapes and shardings only: nothing allocated
    return setup, state, mesh


def _expected(case, paths):
    preds = CASES[case][2]
    want = {}
    for p in paths:
        hits = [g for g in ("caption", "instruction") if preds[g](p)]
        assert len(hits) <= 1, (p, hits)
        want[p] = hits[0] if hits else "frozen"
    return want


@pytest.mark.parametrize("case", list(CASES))
def test_state_and_optimizer_hold_exactly_the_recipe_trainables(case):
    """The train state's parameters are the hand-listed trainable leaves (each in its group), the frozen tree the
    rest, and the optimizer state has two moments (Adam's mu and nu) per trainable leaf in its group's state and
    no array for a frozen leaf (its other leaves are scalar counts)."""
    setup, state, _ = _build(case)
    trainable, frozen = _paths(state["params"]), _paths(setup.frozen)
    assert not set(trainable) & set(frozen)
    want = _expected(case, set(trainable) | set(frozen))
    assert {p for p, g in want.items() if g != "frozen"} == set(trainable), case
    assert set(frozen) == {p for p, g in want.items() if g == "frozen"}
    assert {p: g for p, g in _paths(setup.labels).items()} == {p: want[p] for p in trainable}
    assert trainable and any(("kernel" in p or "embedding" in p) for p in frozen)  # a frozen base exists
    moments = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
        if leaf.shape == ():
            continue  # step counts
        group = path[1].key  # .inner_states[<group>].inner_state[0].mu[<parameter path>]
        leaf_path = "/".join(str(k.key) for k in path[2:] if isinstance(k, jax.tree_util.DictKey))
        assert want.get(leaf_path) == group, (case, jax.tree_util.keystr(path))
        assert leaf.shape == trainable[leaf_path].shape
        moments[leaf_path] = moments.get(leaf_path, 0) + 1
    assert moments == {p: 2 for p in trainable}, case


def _equations(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in it (scan bodies, remat, pjit, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from _equations(sub)


STACKED = ("layers", "resblocks", "visual_blocks")  # subtrees whose leaves carry a leading layer axis [L, ...]


def _weight_shapes(tree) -> set:
    """Shapes a weight matrix's gradient takes inside the step: the matrix itself, one layer of a stacked [L, ...]
    leaf (scan bodies see one layer), and the transpose of a 2-D one (the transpose rule may yield either)."""
    out = set()
    for path, leaf in traverse_util.flatten_dict(tree).items():
        shape = tuple(leaf.shape)[1:] if set(path) & set(STACKED) else tuple(leaf.shape)
        if len(shape) >= 2:
            out |= {shape, shape[::-1]} if len(shape) == 2 else {shape}
    return out


def _abstract_batch(setup, rows=7, length=11):
    """One abstract batch per stream; 7 rows x 11 tokens, so no activation has a weight matrix's shape."""
    one = {"tokens": jax.ShapeDtypeStruct((rows, length), jnp.int32),
           "targets": jax.ShapeDtypeStruct((rows, length), jnp.int32),
           "loss_mask": jax.ShapeDtypeStruct((rows, length), jnp.float32)}
    vision = setup.model.vision
    if vision is not None:
        one["images"] = jax.ShapeDtypeStruct((rows, vision.image_size, vision.image_size, 3), jnp.float32)
        one["has_image"] = jax.ShapeDtypeStruct((rows,), jnp.bool_)
    return {s.batch_key: one for s in setup.streams}


@pytest.mark.parametrize("case", ["paper-joint", "release-finetune", "llava-stage2", "owl-stage2"])
def test_no_gradient_is_computed_for_a_frozen_weight(case):
    """In the traced train step, no matrix product (or convolution) yields an array shaped like a frozen weight
    matrix, i.e. a frozen weight's gradient; the same search does find the trainable weights' gradients. In these
    recipes no trainable weight shares a frozen weight's shape, so every hit would be a frozen gradient."""
    setup, state, mesh = _build(case)
    frozen, trainable = _weight_shapes(setup.frozen), _weight_shapes(state["params"])
    assert frozen and not frozen & trainable, frozen & trainable
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        jaxpr = jax.make_jaxpr(setup.train_step.step_fn)(state, setup.frozen, _abstract_batch(setup))
    products = {tuple(e.outvars[0].aval.shape) for e in _equations(jaxpr.jaxpr)
                if e.primitive.name in ("dot_general", "conv_general_dilated")}
    assert not products & frozen, sorted(products & frozen)
    assert products & trainable  # the search sees weight gradients when there are some
