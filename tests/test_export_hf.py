"""`lav2 export hf`: adapters merged into a plain Hugging Face Llama directory.

Proves: for the `output` placement (s ⊙ (Wx + b)) with LoRA, and for the `input` placement (W(s ⊙ x) + b, the
65B chat model) — every bias, scale, norm and LoRA tensor random and non-trivial, GQA — `LlamaForCausalLM`
loading the export reproduces our float32 logits to max-abs ≤ 1e-5; models with adapter prompts or visual fusion
are refused with a message saying why (in test_convert_official via the CLI).
"""

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import LlamaForCausalLM

from lav2_jax.core import presets
from lav2_jax.checkpoint import save_pretrained
from lav2_jax.checkpoint.export.hf import export_hf
from lav2_jax.checkpoint.pretrained import adapter_mask
from lav2_jax.core.config import AdapterConfig
from lav2_jax.model.factory import build_model
from ckpt_utils import random_params, write_sentencepiece
from model_utils import random_tokens

CONFIG = presets.get_model("tiny").replace(n_layers=2, vocab_size=64)


def assert_hf_logits_match(hf_dir: str, model, params) -> LlamaForCausalLM:
    """`LlamaForCausalLM` loaded from `hf_dir` reproduces our float32 logits to max-abs <= 1e-5; returns it."""
    hf = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    tokens = random_tokens(2, 9, CONFIG.vocab_size)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
    with torch.no_grad():
        ref = hf(torch.as_tensor(np.array(tokens), dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(ours - ref)) <= 1e-5, np.max(np.abs(ours - ref))
    return hf


@pytest.mark.parametrize("kind,lora", [("output", 4), ("input", 0), ("bias_qo_ffn", 2)])
def test_export_matches_transformers(tmp_path, kind, lora):
    adapter = AdapterConfig(linear_kind=kind, norm_tuning=True, lora_rank=lora, prompt_len=0, prompt_layers=0,
                            visual_fusion="none")
    model = build_model(CONFIG, adapter)
    params = random_params(model, seed=3, scale=0.1)
    tok = write_sentencepiece(str(tmp_path / "tokenizer.model"))
    ckpt = save_pretrained(tmp_path / "ckpt", model, params, tokenizer=tok)
    out = export_hf(ckpt, str(tmp_path / "hf"), dtype="float32")
    hf = assert_hf_logits_match(out, model, params)
    assert hf.config.attention_bias == (kind != "none") and (tmp_path / "hf" / "tokenizer.model").exists()


def test_export_of_adapter_only_checkpoint_reads_its_base(tmp_path):
    """An adapter-only dir (save_adapter, `base` recorded) exports its own adapters merged into its base's weights."""
    from lav2_jax.checkpoint import save_adapter

    adapter = AdapterConfig(linear_kind="output", norm_tuning=True, lora_rank=2, prompt_len=0, prompt_layers=0,
                            visual_fusion="none")
    model = build_model(CONFIG, adapter)
    base_params, own = random_params(model, seed=1, scale=0.1), random_params(model, seed=2, scale=0.1)
    base = save_pretrained(tmp_path / "base", model, base_params)
    # frozen leaves from the base, adapter leaves from the adapter dir
    mask = adapter_mask(model, own)
    flat_b, flat_o = traverse_util.flatten_dict(base_params), traverse_util.flatten_dict(own)
    expected = traverse_util.unflatten_dict({k: flat_o[k] if mask[k] else flat_b[k] for k in flat_b})
    ckpt = save_adapter(tmp_path / "adapter", model, own, base=base)
    assert_hf_logits_match(export_hf(ckpt, str(tmp_path / "hf"), dtype="float32"), model, expected)
