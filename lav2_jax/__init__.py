"""lav2_jax: LLaMA-Adapter V2 (arXiv 2304.15010) in JAX/Flax Linen."""

from lav2_jax.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax import presets

__all__ = ["AdapterConfig", "ModelConfig", "VisionConfig", "presets"]
__version__ = "0.1.0"
