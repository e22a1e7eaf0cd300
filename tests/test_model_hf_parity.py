"""Parity with Hugging Face `LlamaForCausalLM` (torch, random tiny weights), with and without GQA.

Tolerance: max-abs ≤ 1e-5 on float32 logits (full-precision matmuls on CPU).
"""

import numpy as np
import pytest

from lav2_jax.core import presets
from lav2_jax.model.factory import build_model
from ckpt_writers import hf_llama, hf_logits
from model_utils import hf_llama_to_params, random_tokens


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_logits_match_hf(n_kv_heads):
    config = presets.get_model("tiny").replace(n_kv_heads=n_kv_heads, n_layers=3, rope_theta=10000.0)
    hf = hf_llama(config)
    tokens = random_tokens(2, 17, config.vocab_size)
    ref = hf_logits(hf, tokens)

    model = build_model(config, presets.get_adapter("none"))
    params = hf_llama_to_params(hf.state_dict(), config.n_layers)
    ours = np.asarray(model.apply({"params": params}, tokens))
    assert np.max(np.abs(ours - ref)) <= 1e-5, np.max(np.abs(ours - ref))
