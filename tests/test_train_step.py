"""The jitted train step in-process on the tiny joint model (disjoint groups, accumulation, loss, NaN)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from lav2_jax.core.sharding import LOGICAL_RULES, make_mesh
from lav2_jax.train import loss as loss_lib
from lav2_jax.train import optimizer as optim
from lav2_jax.train import state as state_lib
from lav2_jax.train import step as step_lib
from lav2_jax.train.data import make_data
from lav2_jax.train.mesh import global_batch
from tests.train_utils import leaves, tiny_config


@pytest.fixture(scope="module")
def joint():
    config = tiny_config()
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(config, mesh)
    data = make_data(config, setup)
    batches = [global_batch(next(data), mesh) for _ in range(3)]
    return types.SimpleNamespace(config=config, setup=setup, host_state=jax.device_get(state), batches=batches,
                                 steppers={})


def fresh(j):
    return jax.device_put(j.host_state, j.setup.state_shardings)


def stepper(j, recipe, accum_steps=1):
    """The jitted step of `recipe` (cached per module: each compilation costs seconds)."""
    if (recipe, accum_steps) not in j.steppers:
        s = j.setup
        fn = step_lib.make_step_fn(s.model, s.labels, s.tx, step_lib.recipe_streams(recipe), accum_steps,
                                   vocab_chunk=int(j.config.loss.vocab_chunk))
        j.steppers[recipe, accum_steps] = step_lib.TrainStep(fn, s.mesh, s.state_shardings, s.frozen_shardings,
                                                             LOGICAL_RULES)
    return j.steppers[recipe, accum_steps]


def by_group(j, tree):
    flat, labels = leaves(tree), leaves(j.setup.labels)
    return {g: {k: v for k, v in flat.items() if labels[k] == g} for g in optim.TRAINABLE_GROUPS}


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


@pytest.mark.parametrize("recipe,trained,idle", [("pretrain", "caption", "instruction"),
                                                 ("finetune", "instruction", "caption")])
def test_single_group_step_leaves_other_group_and_frozen_bit_identical(joint, recipe, trained, idle):
    frozen_before = jax.device_get(joint.setup.frozen)
    state = fresh(joint)
    step = stepper(joint, recipe)
    for b in joint.batches:  # lr is 0 in step 1 (warm-up), the visual gate opens in step 2, the connector moves next
        state, _ = step(state, joint.setup.frozen, {k: v for k, v in b.items() if k == trained})
    before, after = by_group(joint, joint.host_state["params"]), by_group(joint, jax.device_get(state["params"]))
    assert not changed(before[idle], after[idle])
    assert changed(before[trained], after[trained]) == set(before[trained])  # every trained leaf moved
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, frozen_before,
                                                         jax.device_get(joint.setup.frozen)))
    idle_state = jax.device_get(state["opt_state"].inner_states[idle])
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        np.array_equal, joint.host_state["opt_state"].inner_states[idle], idle_state))


def test_joint_step_changes_both_groups_and_nothing_frozen(joint):
    frozen_before = jax.device_get(joint.setup.frozen)
    state = fresh(joint)
    step = stepper(joint, "joint")
    for b in joint.batches:
        state, metrics = step(state, joint.setup.frozen, b)
    before, after = by_group(joint, joint.host_state["params"]), by_group(joint, jax.device_get(state["params"]))
    for g in optim.TRAINABLE_GROUPS:
        assert changed(before[g], after[g]) == set(before[g]), g
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, frozen_before,
                                                         jax.device_get(joint.setup.frozen)))
    assert set(metrics) >= {"loss/caption", "loss/instruction", "grad_norm/caption", "grad_norm/instruction"}


def opened(j, value=0.5):
    """The fresh state with every gate open (zero-init gates give the connector and the adapter prompts zero
    gradients) and the global step at the end of the warm-up, so the learning rate of the next step is the peak."""
    warmup = {g: int(j.config.optim[g].warmup_steps) for g in optim.TRAINABLE_GROUPS}
    rates = optim.group_learning_rates({g: dict(j.config.optim[g]) for g in optim.TRAINABLE_GROUPS},
                                       int(j.config.total_steps), 1, max(warmup.values()))
    assert min(rates.values()) > 0.01, rates  # a zero learning rate would let every parameter test pass
    flat = traverse_util.flatten_dict(j.host_state["params"])
    gates = [k for k in flat if k[-1] in ("gate", "visual_gate")]
    assert {k[-1] for k in gates} == {"gate", "visual_gate"}
    flat.update({k: np.full_like(flat[k], value) for k in gates})
    return dict(j.host_state, params=traverse_util.unflatten_dict(flat), step=np.int32(max(warmup.values())))


def test_each_loss_reaches_only_its_own_group(joint):
    """The caption loss's gradient would reach instruction leaves (they are in its forward pass): the step must
    not let it. One step at the peak learning rate with every gate open: the caption-only step moves every caption
    leaf and no other, the instruction-only step every instruction leaf and no other, and the joint step equals
    the caption-only step on the caption leaves and the instruction-only step on the instruction leaves, bit for
    bit (a joint step that summed both streams' gradients over both groups would differ on every leaf)."""
    step_j, step_c, step_i = stepper(joint, "joint"), stepper(joint, "pretrain"), stepper(joint, "finetune")
    b = joint.batches[0]
    host = opened(joint)
    put = lambda: jax.device_put(host, joint.setup.state_shardings)  # noqa: E731  (the step donates its state)
    frozen_before = leaves(jax.device_get(joint.setup.frozen))
    out = {"joint": step_j(put(), joint.setup.frozen, b),
           "caption": step_c(put(), joint.setup.frozen, {"caption": b["caption"]}),
           "instruction": step_i(put(), joint.setup.frozen, {"instruction": b["instruction"]})}
    out = {k: jax.device_get(s) for k, (s, _) in out.items()}
    before = by_group(joint, host["params"])
    for g, other in (("caption", "instruction"), ("instruction", "caption")):
        after = by_group(joint, out[g]["params"])
        assert changed(before[g], after[g]) == set(before[g]), g  # every leaf of the trained group moved
        assert not changed(before[other], after[other]), g  # ... and not one leaf of the other group
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(
            np.array_equal, host["opt_state"].inner_states[other], out[g]["opt_state"].inner_states[other]))
        joint_after = by_group(joint, out["joint"]["params"])[g]
        for k in before[g]:
            np.testing.assert_array_equal(joint_after[k], after[g][k], err_msg=k)
    assert set(leaves(out["joint"]["params"])) == set(leaves(joint.setup.labels))  # no frozen leaf is in the state
    after_frozen = leaves(jax.device_get(joint.setup.frozen))
    assert all(np.array_equal(frozen_before[k], after_frozen[k]) for k in frozen_before)


def test_optimizer_state_holds_no_frozen_leaves(joint):
    counts = joint.setup.counts
    opt_state = joint.host_state["opt_state"]
    arrays = [x for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "shape")]
    scalars = sum(1 for x in arrays if x.shape == ())
    # AdamW: two moments per trainable scalar + one step count per group; nothing of the 250k frozen scalars
    assert optim.state_leaf_count(opt_state) == 2 * (counts["caption"] + counts["instruction"]) + scalars
    frozen_paths = {k for k, g in traverse_util.flatten_dict(pg.param_groups(
        state_lib.abstract_params(joint.setup.model), joint.config.param_recipe, joint.setup.model.adapter)).items()
        if g == "frozen"}
    trainable_paths = set(traverse_util.flatten_dict(joint.host_state["params"]))
    assert not frozen_paths & trainable_paths
    assert set(traverse_util.flatten_dict(jax.device_get(joint.setup.frozen))) == frozen_paths


def test_gradient_accumulation_equals_one_larger_batch(joint):
    """4 micro-batches of 2 rows == one batch of 8 rows: per-token sums are accumulated and divided once."""
    whole, micro = stepper(joint, "joint"), stepper(joint, "joint", accum_steps=4)
    s1, s2 = fresh(joint), fresh(joint)
    for b in joint.batches[:2]:
        s1, m1 = whole(s1, joint.setup.frozen, b)
        s2, m2 = micro(s2, joint.setup.frozen, b)
        for k in ("loss/caption", "loss/instruction", "tokens/caption", "grad_norm/instruction"):
            np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=2e-6, err_msg=k)
    # Only float summation order differs: gradients agree to ~1e-7 relative; after two AdamW steps (lr ≤ 0.1,
    # update ≈ lr·m/√v) parameters agree to well under 1e-5.
    p1, p2 = leaves(jax.device_get(s1["params"])), leaves(jax.device_get(s2["params"]))
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=0, atol=1e-5, err_msg=k)


def test_non_finite_loss_keeps_that_group(joint):
    step = stepper(joint, "joint")
    state, _ = step(fresh(joint), joint.setup.frozen, joint.batches[0])  # step 1 has lr 0 (warm-up)
    host = jax.device_get(state)
    b = dict(joint.batches[1])
    b["instruction"] = dict(b["instruction"], loss_mask=b["instruction"]["loss_mask"] * jnp.nan)
    state, m = step(state, joint.setup.frozen, b)
    assert float(m["finite/instruction"]) == 0.0 and float(m["finite/caption"]) == 1.0
    before, after = by_group(joint, host["params"]), by_group(joint, jax.device_get(state["params"]))
    assert not changed(before["instruction"], after["instruction"])
    # moments and Adam's count are kept; only the schedule count advances with the global step (it stays in step)
    kept = optim.with_schedule_count(host["opt_state"], ("instruction",), 2).inner_states["instruction"]
    after_instruction = jax.device_get(state["opt_state"].inner_states["instruction"])
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, kept, after_instruction))
    assert changed(before["caption"], after["caption"])


def test_nan_policy_stop_names_step_group_and_checkpoint():
    from lav2_jax.train.trainer import NonFiniteError, _Loop

    loop = _Loop.__new__(_Loop)
    loop.config = types.SimpleNamespace(nan_policy="stop")
    loop.last_good, loop.ckpt = 20, types.SimpleNamespace(directory="/w/checkpoints")
    loop.step_work, loop.window_tokens, loop.window_work = {}, 0, 0.0
    with pytest.raises(NonFiniteError, match=r"step 23 in group 'caption'.*last good checkpoint: step 20"):
        loop.finish(23, {"finite/caption": jnp.float32(0), "loss/caption": jnp.float32(jnp.nan)})


def test_tiny_loss_falls_well_below_start(joint):
    """30 joint steps on a fixed 8-example dataset (answers from 8 words): loss drops by more than half."""
    step = stepper(joint, "joint")
    state = fresh(joint)
    data = make_data(joint.config, joint.setup)
    losses = []
    for _ in range(30):
        state, m = step(state, joint.setup.frozen, global_batch(next(data), joint.setup.mesh))
        losses.append((float(m["loss/caption"]), float(m["loss/instruction"])))
    for i, name in enumerate(("caption", "instruction")):
        assert losses[-1][i] < 0.5 * losses[0][i], (name, losses[0][i], losses[-1][i])


def test_chunked_loss_equals_full_vocabulary():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 96)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 96, (2, 5)), jnp.int32)
    mask = jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.float32)
    full = jax.value_and_grad(lambda h: loss_lib.mean_token_loss(h, w, t, mask, 0))(h)
    chunked = jax.value_and_grad(lambda h: loss_lib.mean_token_loss(h, w, t, mask, 32))(h)
    ref = -jnp.take_along_axis(jax.nn.log_softmax(h @ w), t[..., None], -1)[..., 0]
    np.testing.assert_allclose(full[0], jnp.sum(ref * mask) / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(chunked[0], full[0], rtol=1e-6)
    np.testing.assert_allclose(chunked[1], full[1], rtol=1e-5, atol=1e-7)
    assert loss_lib.chunk_size(32000, 8000) == 8000 and loss_lib.chunk_size(32000, 7000) == 6400


def test_schedule_and_decay_mask():
    sched = optim.warmup_cosine(1.0, 10, 110)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0) and float(sched(60)) == pytest.approx(0.5)
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)
    assert optim.learning_rate(1e-3, 64, True) == pytest.approx(2.5e-4)
    params = {"layers": {"attention": {"gate": np.zeros((4, 8)), "wq": {"bias": np.zeros((4, 8))}},
                         "norm": {"scale": np.zeros((4, 8))}},
              "adapter_query": np.zeros((3, 10, 8)), "connector": {"proj": {"kernel": np.zeros((8, 8))}}}
    names = {"layers": {"attention": {"gate": ("layers", None), "wq": {"bias": ("layers", "heads")}},
                        "norm": {"scale": ("layers", "norm")}},
             "adapter_query": ("layers", "prompt", "embed"), "connector": {"proj": {"kernel": ("a", "b")}}}
    mask = traverse_util.flatten_dict(optim.decay_mask(params, names))
    assert mask == {("layers", "attention", "gate"): False, ("layers", "attention", "wq", "bias"): False,
                    ("layers", "norm", "scale"): False, ("adapter_query",): True, ("connector", "proj", "kernel"): True}
    assert isinstance(optim.build_optimizer(params, jax.tree_util.tree_map(lambda _: "instruction", params),
                                            {g: {"base_lr": 1.0} for g in optim.TRAINABLE_GROUPS}, 10, 256, names),
                      optax.GradientTransformation)
