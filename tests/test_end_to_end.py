"""End to end on real formats: `lav2 data build` → a saved base checkpoint → `lav2 train` (joint recipe, grain
pipelines, base restored from the checkpoint) → `lav2 export trained` → `load_pretrained` of the adapter."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import lav2_jax
from lav2_jax.core import presets
from lav2_jax.checkpoint import save_pretrained
from lav2_jax.cli.main import main
from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.train.checkpointing import read_state
from lav2_jax.train.data import _base_channel_order
from lav2_jax.train.trainer import train
from train_utils import tiny_config


@pytest.mark.slow
def test_data_to_trained_adapter_checkpoint(tmp_path):
    (tmp_path / "tok").mkdir()
    tok_path = train_sentencepiece(str(tmp_path / "tok" / "tokenizer.model"))
    tok = load_tokenizer(tok_path)
    rows = ["path\tcaption"]
    for i in range(6):
        write_image(str(tmp_path / "img" / f"{i}.png"), 40 + 4 * i, 36, seed=i)
        rows.append(f"img/{i}.png\tA picture with {i} red squares.")
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    write_jsonl(str(tmp_path / "alpaca.jsonl"),
                [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i + 1)))}
                 for i in range(10)])
    for kind, src, out in (("caption", "pairs.tsv", "cap_ds"), ("instruction", "alpaca.jsonl", "ins_ds")):
        assert main(["data", "build", "--kind", kind, "--src", str(tmp_path / src), "--out", str(tmp_path / out),
                     "--workers", "0", "--quiet"]) == 0

    # the "user's" base: a tiny LLaMA + CLIP with this tokenizer's vocabulary, saved as a lav2_jax checkpoint
    config = presets.get_model("tiny").replace(vocab_size=tok.vocab_size)
    vision = presets.get_vision("tiny")
    adapter = presets.tiny_adapter("paper", config, vision)
    base_model = build_model(config, adapter, vision)
    base_params = init_params(base_model, jax.random.PRNGKey(0))
    base_dir = save_pretrained(tmp_path / "base", base_model, base_params, tokenizer=tok_path, channel_order="bgr")

    workdir = str(tmp_path / "run")
    cfg = tiny_config(f"--config.model.base_checkpoint={base_dir}", "--config.data.source=pipeline",
                      f"--config.data.tokenizer={tok_path}", f"--config.data.caption.path={tmp_path / 'cap_ds'}",
                      f"--config.data.instruction.path={tmp_path / 'ins_ds'}", "--config.data.caption.max_len=256",
                      "--config.data.instruction.max_len=256", "--config.batch.caption=4",
                      "--config.batch.instruction=4", "--config.total_steps=6", "--config.checkpoint.every_steps=3")
    assert _base_channel_order(cfg.model) == "bgr"  # images are fed in the base's channel order by default
    summary = train(cfg, workdir)
    assert summary["step"] == 6
    logs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert logs and all(np.isfinite(r["loss/caption"]) and np.isfinite(r["loss/instruction"]) for r in logs)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))

    out = str(tmp_path / "trained")
    assert main(["export", "trained", "--workdir", workdir, "--out", out]) == 0
    bundle = lav2_jax.load_pretrained(out)
    assert bundle.tokenizer is not None and bundle.tokenizer.vocab_size == tok.vocab_size
    trained = traverse_util.flatten_dict(read_state(os.path.join(workdir, "checkpoints"))["params"])
    loaded = traverse_util.flatten_dict(bundle.params)
    for path, value in trained.items():  # every trained leaf made it into the checkpoint, bit for bit
        np.testing.assert_array_equal(np.asarray(loaded[path]), value)
    frozen_path = ("layers", "attention", "wq", "kernel")
    np.testing.assert_array_equal(loaded[frozen_path], traverse_util.flatten_dict(base_params)[frozen_path])
    assert any(float(np.abs(np.asarray(loaded[p]) - np.asarray(traverse_util.flatten_dict(base_params)[p])).max())
               > 0 for p in trained)

    tokens = jnp.asarray([tok.encode("Count to 3.", bos=True)], jnp.int32)
    image = jnp.zeros((1, vision.image_size, vision.image_size, 3))
    logits = bundle.model.apply({"params": bundle.params}, tokens, image, jnp.ones((1,), bool))
    assert logits.shape == (1, tokens.shape[1], tok.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))
