"""Parity with Hugging Face `LlamaForCausalLM` (torch, random tiny weights), with and without GQA.

Tolerance: max-abs ≤ 1e-5 on float32 logits (full-precision matmuls on CPU).
"""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lav2_jax import presets
from lav2_jax.model.factory import build_model
from model_utils import hf_llama_to_params, random_tokens


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_logits_match_hf(n_kv_heads):
    config = presets.get_model("tiny").replace(n_kv_heads=n_kv_heads, n_layers=3, rope_theta=10000.0)
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
                         num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                         num_key_value_heads=config.kv_heads, rms_norm_eps=config.norm_eps,
                         max_position_embeddings=config.max_seq_len, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                         attn_implementation="eager")
    hf = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # norms are ones at init: make them non-trivial so the mapping is really checked
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    tokens = random_tokens(2, 17, config.vocab_size)
    with torch.no_grad():
        ref = hf(torch.as_tensor(np.array(tokens), dtype=torch.long)).logits.numpy()

    model = build_model(config, presets.get_adapter("none"))
    params = hf_llama_to_params(hf.state_dict(), config.n_layers)
    ours = np.asarray(model.apply({"params": params}, tokens))
    assert np.max(np.abs(ours - ref)) <= 1e-5, np.max(np.abs(ours - ref))
