"""Inference: batched generation with a KV cache, streaming, chat and expert models.

  generate(bundle, prompts, images=None, max_new_tokens=256, temperature=0.1, top_p=0.75, seed=0, *, mesh=None)
      -> Generated(texts, token_ids)                                     (lav2_jax.inference.generation)
  stream(bundle, prompt, image=None, ...) -> iterator of token ids       (lav2_jax.inference.generation)
  ChatSession                                                            (lav2_jax.inference.chat)
  Expert, CaptionExpert, OcrExpert, get_expert, expert_prompt            (lav2_jax.inference.experts)
"""

from lav2_jax.inference.generation import (Generated, ImageNotSupported, ImagePlaceholderMismatch, PromptError,
                                           PromptTooLong, generate, stream)

__all__ = ["Generated", "ImageNotSupported", "ImagePlaceholderMismatch", "PromptError", "PromptTooLong", "generate",
           "stream"]
