"""lav2_jax: LLaMA-Adapter V2 (arXiv 2304.15010) in JAX/Flax Linen."""

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.core import presets

__all__ = ["AdapterConfig", "ModelConfig", "VisionConfig", "presets", "load_pretrained", "generate", "encode_images",
           "next_token_logits"]
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import lav2_jax` (and the CLI parser) stays free of jax/orbax
    if name == "load_pretrained":
        from lav2_jax.checkpoint.pretrained import load_pretrained
        return load_pretrained
    if name == "generate":
        from lav2_jax.inference.generation import generate
        return generate
    if name in ("encode_images", "next_token_logits"):
        from lav2_jax.inference import scoring
        return getattr(scoring, name)
    raise AttributeError(f"module 'lav2_jax' has no attribute {name!r}")
