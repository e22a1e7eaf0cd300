"""One test per reliability defect: per-stream clipping, no NaN leak across groups, schedules in step after a skipped
update, the base checkpoint's channel order, the role-based decay mask, CLIP heads, config-override errors, the
quiet failed checkpoint read."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lav2_jax.core.sharding import LOGICAL_RULES, make_mesh
from lav2_jax.train import optimizer as optim
from lav2_jax.train import state as state_lib
from lav2_jax.train import step as step_lib
from lav2_jax.train.data import make_data
from lav2_jax.train.mesh import global_batch
from tests.train_utils import leaves, tiny_config

CLIP = 1e-3  # far below the tiny model's gradient norms: clipping is active in every step


@pytest.fixture(scope="module")
def clipped():
    """The tiny joint setup with warm-up off (lr > 0 from step 1) and one jitted, clipped joint step."""
    config = tiny_config("--config.optim.caption.warmup_steps=0", "--config.optim.instruction.warmup_steps=0",
                         f"--config.optim.clip_norm={CLIP}")
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(config, mesh)
    data = make_data(config, setup)
    batches = [global_batch(next(data), mesh) for _ in range(2)]
    fn = step_lib.make_step_fn(setup.model, setup.labels, setup.tx, step_lib.recipe_streams("joint"),
                               clip_norm=CLIP, vocab_chunk=int(config.loss.vocab_chunk))
    step = step_lib.TrainStep(fn, setup.mesh, setup.state_shardings, setup.frozen_shardings, LOGICAL_RULES)
    host = jax.device_get(state)
    run = lambda batch: jax.device_get(step(jax.device_put(host, setup.state_shardings), setup.frozen, batch))
    return types.SimpleNamespace(setup=setup, host=host, batches=batches, run=run)


def group(j, tree, g):
    labels = leaves(j.setup.labels)
    return {k: v for k, v in leaves(tree).items() if labels[k] == g}


def with_stream(batch, key, **fields):
    out = dict(batch)
    out[key] = dict(batch[key], **fields)
    return out


def test_clipping_never_couples_the_streams(clipped):
    """Another caption batch (another caption gradient norm) leaves the instruction update bit-identical."""
    a, _ = clipped.batches
    half = jnp.arange(a["caption"]["loss_mask"].shape[0])[:, None] % 2 == 0
    s1, m1 = clipped.run(a)
    s2, m2 = clipped.run(with_stream(a, "caption", loss_mask=a["caption"]["loss_mask"] * half))
    assert float(m1["grad_norm/caption"]) != float(m2["grad_norm/caption"])
    assert min(float(m1["grad_norm/instruction"]), float(m1["grad_norm/caption"])) > 10 * CLIP  # clipping active
    i1, i2 = group(clipped, s1["params"], "instruction"), group(clipped, s2["params"], "instruction")
    assert all(np.array_equal(i1[k], i2[k]) for k in i1)
    assert group(clipped, s1["params"], "caption").keys() and not all(
        np.array_equal(v, group(clipped, s2["params"], "caption")[k]) for k, v in
        group(clipped, s1["params"], "caption").items())


def test_non_finite_caption_stream_never_reaches_the_instruction_update(clipped):
    a, _ = clipped.batches
    good, _ = clipped.run(a)
    bad, m = clipped.run(with_stream(a, "caption", loss_mask=a["caption"]["loss_mask"] * jnp.nan))
    assert float(m["finite/caption"]) == 0.0 and float(m["finite/instruction"]) == 1.0
    i_good, i_bad = group(clipped, good["params"], "instruction"), group(clipped, bad["params"], "instruction")
    assert all(np.isfinite(v).all() for v in i_bad.values())
    assert all(np.array_equal(i_good[k], i_bad[k]) for k in i_good)  # the healthy group stepped as if all were well
    c_before, c_bad = group(clipped, clipped.host["params"], "caption"), group(clipped, bad["params"], "caption")
    assert all(np.array_equal(c_before[k], c_bad[k]) for k in c_before)  # the bad group was skipped


def schedule_counts(opt_state, g):
    import optax

    found = [s.count for s in jax.tree_util.tree_leaves(opt_state.inner_states[g],
                                                        is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
             if isinstance(s, optax.ScaleByScheduleState)]
    assert found
    return [int(c) for c in found]


def test_skipped_group_schedule_stays_in_step_with_the_global_step(clipped):
    """After a skipped instruction update, the instruction schedule counts global steps, so the learning rate it
    applies next is the one the trainer logs (`group_learning_rates(..., step - 1)`)."""
    a, _ = clipped.batches
    bad, m = clipped.run(with_stream(a, "instruction", loss_mask=a["instruction"]["loss_mask"] * jnp.nan))
    assert float(m["finite/instruction"]) == 0.0 and int(bad["step"]) == 1
    assert schedule_counts(bad["opt_state"], "instruction") == [1]
    assert schedule_counts(bad["opt_state"], "caption") == [1]


def test_channel_order_defaults_to_the_base_checkpoints(tmp_path, monkeypatch):
    """Training over a BGR base (converted release weights) feeds BGR images unless the config says otherwise."""
    from lav2_jax.core import presets
    from lav2_jax.checkpoint.layout import CheckpointConfig, write_config
    from lav2_jax.train import data as data_lib

    write_config(str(tmp_path), CheckpointConfig(model=presets.get_model("tiny"), adapter=None,
                                                 vision=presets.get_vision("tiny"), channel_order="bgr"))
    seen = []
    monkeypatch.setattr(data_lib, "Pipeline", lambda path, tok, pc: seen.append(pc.channel_order) or iter(()))
    monkeypatch.setattr(data_lib, "load_tokenizer", lambda path: None)
    adapter = types.SimpleNamespace(splice=None, system="lav2")
    model = types.SimpleNamespace(vision=presets.get_vision("tiny"), adapter=adapter)
    setup = types.SimpleNamespace(model=model,
                                  global_batch={"instruction": 2}, streams=step_lib.recipe_streams("finetune"))
    config = tiny_config(f"--config.model.base_checkpoint={tmp_path}", "--config.data.source=pipeline",
                         "--config.recipe=finetune")
    data_lib.make_data(config, setup)
    config.data.channel_order = "rgb"  # an explicit setting still wins
    data_lib.make_data(config, setup)
    assert seen == ["bgr", "rgb"]


def test_decay_mask_without_logical_names():
    """Stacked per-layer vectors outside `layers/` (connector block scales [K, D], `visual_gate` [K, N]) are not
    decayed without names; the tiny model's mask is the same with and without names."""
    import flax.linen as nn

    from lav2_jax.model.factory import abstract_params

    params = {"connector": {"visual_blocks": {"norm1": {"scale": np.zeros((2, 8)), "bias": np.zeros((2, 8))},
                                              "attn": {"qkv": {"kernel": np.zeros((2, 8, 24))}}},
                            "visual_query": np.zeros((5, 8))},
              "visual_gate": np.zeros((2, 4)), "adapter_query": np.zeros((3, 10, 8)),
              "layers": {"attention": {"gate": np.zeros((4, 4))}}}
    mask = traverse_util.flatten_dict(optim.decay_mask(params))
    assert mask == {("connector", "visual_blocks", "norm1", "scale"): False,
                    ("connector", "visual_blocks", "norm1", "bias"): False,
                    ("connector", "visual_blocks", "attn", "qkv", "kernel"): True,
                    ("connector", "visual_query"): True, ("visual_gate",): False, ("adapter_query",): True,
                    ("layers", "attention", "gate"): False}
    config = tiny_config()
    boxed = abstract_params(state_lib.model_from_config(config.model), boxed=True)
    assert optim.decay_mask(nn.unbox(boxed)) == optim.decay_mask(nn.unbox(boxed), nn.get_partition_spec(boxed))


def test_clip_heads_for_a_width_that_is_not_a_multiple_of_64(tmp_path, capsys):
    import torch

    from ckpt_writers import hf_clip, hf_clip_tokens, openai_clip_state_dict
    from lav2_jax.core import presets
    from lav2_jax.checkpoint import load_vision
    from lav2_jax.cli.main import main

    vision = presets.get_vision("tiny").replace(width=48, heads=3)
    model = hf_clip(vision)
    torch.save(openai_clip_state_dict(model), tmp_path / "clip.pt")
    argv = ["convert", "clip", "--clip", str(tmp_path / "clip.pt"), "--weight-dtype", "float32"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "width 48 is not a multiple of 64" in err and "--clip-heads" in err and "Traceback" not in err
    assert main(argv + ["--out", str(tmp_path / "b"), "--clip-heads", "5"]) == 2
    assert "does not divide the vision width 48" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "c"), "--clip-heads", "3"]) == 0
    tower, params = load_vision(str(tmp_path / "c"), dtype="float32")
    assert tower.config.heads == 3
    images = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(tower.apply({"params": params}, jnp.asarray(images)))
    np.testing.assert_allclose(ours, hf_clip_tokens(model, images), atol=1e-5, rtol=0)  # float32, ≤1e-5 max-abs


def test_mistyped_config_override_names_the_field_and_the_closest(tmp_path, capsys):
    from lav2_jax.cli.main import main
    from tests.train_utils import TINY_CONFIG

    base = ["train", "--config", TINY_CONFIG, "--workdir", str(tmp_path)]
    assert main(base + ["--config.train.steps=60"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'train.steps'" in err and "closest: total_steps" in err, err
    assert main(base + ["--config.log.progres=False"]) == 2
    assert "closest: log.progress" in capsys.readouterr().err
    assert main(base + ["--config.total_steps=ten"]) == 2
    assert "'total_steps' takes int values; 'ten'" in capsys.readouterr().err


def test_failed_read_silences_tensorstore_futures_only():
    """After a failed checkpoint read, the unretrieved futures of its sibling TensorStore reads (plain futures whose
    repr names only the OCDBT database) log nothing; an unrelated unretrieved future still logs."""
    import asyncio
    import gc
    import io
    import logging

    from lav2_jax.checkpoint.items import quiet_failed_reads

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger("asyncio").addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        quiet_failed_reads()
        for message in ('OUT_OF_RANGE: Error reading "params.x/0.0.0" in OCDBT database at local file "/tmp/c/"',
                        "unrelated failure"):
            f = loop.create_future()
            f.set_exception(ValueError(message))
            del f
            gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
        loop.close()
    logged = buf.getvalue()
    assert "OCDBT" not in logged and "unrelated failure" in logged
