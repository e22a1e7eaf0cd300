"""lav2_jax: LLaMA-Adapter V2 (arXiv 2304.15010) in JAX/Flax Linen."""

import importlib

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.core import presets

__all__ = ["AdapterConfig", "ModelConfig", "VisionConfig", "presets", "load_pretrained", "generate", "encode_images",
           "next_token_logits"]
__version__ = "0.1.0"

# Loaded on first use: `import lav2_jax` (and the CLI parser) stays free of jax/orbax.
_LAZY = {
    "load_pretrained": "lav2_jax.checkpoint.pretrained", "generate": "lav2_jax.inference.generation",
    "encode_images": "lav2_jax.inference.scoring", "next_token_logits": "lav2_jax.inference.scoring",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lav2_jax' has no attribute {name!r}")
