"""Writes tests/data/old_checkpoints/: tiny checkpoints saved by the code before the systems registry (commit
d4ffbee), and the logits that code computes for a fixed input (read by tests/test_old_checkpoints.py).

Run with the old code first on the path (it imports modules that no longer exist at those paths):

  git archive d4ffbee | tar -x -C /tmp/old_d4ffbee
  PYTHONPATH=/tmp/old_d4ffbee JAX_PLATFORMS=cpu python tests/data/make_old_checkpoints.py

One checkpoint per system, float32, a 2-layer decoder of width 8 over a 32-word vocabulary and a 1-block 8 px CLIP
tower (as small as the format allows: orbax's metadata is most of the bytes): `lav2` (early-fusion visual prompts,
adapter prompts, bias/scale, tuned norms), `llava` (mlp2x_gelu projector over CLIP layer −2, LoRA), `owl` (vision
model + a 1-layer abstractor). Every leaf is perturbed
from its init (gates, biases and LoRA B start at zero), so each one changes the logits. No tokenizer is stored.
"""

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.checkpoint import save_pretrained
from lav2_jax.config import AbstractorConfig, AdapterConfig, ModelConfig, SpliceConfig, VisionConfig
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.model.owl import owl_splice

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "old_checkpoints")
F32 = dict(weight_dtype="float32", dtype="float32")
MODEL = ModelConfig(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=32, ffn_hidden_dim=8, max_seq_len=16,
                    **F32)
CLIP = VisionConfig(image_size=8, patch_size=4, width=8, layers=1, heads=2, output_dim=8, **F32)
IMAGE_ID = 32  # outside the vocabulary, like LLaMA's 32000

SYSTEMS = {
    "lav2": (AdapterConfig(linear_kind="output", prompt_len=2, prompt_layers=1, visual_fusion="early",
                           early_layers=1, query_len=2, v_depth=1, v_width=8, v_num_heads=2), CLIP),
    "llava": (AdapterConfig(linear_kind="none", norm_tuning=False, lora_rank=2, prompt_len=0, prompt_layers=0,
                            visual_fusion="none",
                            splice=SpliceConfig(system="llava", image_token_id=IMAGE_ID, projector="mlp2x_gelu",
                                                n_tokens=4)), CLIP.replace(output_dim=0)),
    "owl": (AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0, visual_fusion="none",
                          splice=owl_splice(AbstractorConfig(num_queries=2, layers=1, width=8, heads=2, mlp_dim=8),
                                            image_token_id=IMAGE_ID)),
            CLIP.replace(output_dim=8, layer_norm_eps=1e-6)),
}


def inputs(name, adapter):
    """tokens [2, 8], images, has_image: row 0 with an image (spliced: its placeholders at positions 1..n)."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, MODEL.vocab_size, (2, 8)).astype(np.int32)
    tokens[:, 0] = 1
    images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    if adapter.splice is None:
        return tokens, images, np.array([True, False])
    n = adapter.splice.n_tokens
    tokens[0, 1:1 + n] = IMAGE_ID
    return tokens, images[:, None], None


def perturbed(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype)
                                                  for x, k in zip(leaves, keys)])


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    logits = {}
    for seed, (name, (adapter, vision)) in enumerate(SYSTEMS.items()):
        model = build_model(MODEL, adapter, vision)
        params = perturbed(init_params(model, jax.random.PRNGKey(seed)), seed + 10)
        tokens, images, has_image = inputs(name, adapter)
        out = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(images),
                          None if has_image is None else jnp.asarray(has_image))
        save_pretrained(os.path.join(OUT, name), model, params, meta={"made_by": "tests/data/make_old_checkpoints.py"
                                                                      " at commit d4ffbee"})
        logits[f"{name}/tokens"], logits[f"{name}/images"], logits[f"{name}/logits"] = tokens, images, np.asarray(out)
        if has_image is not None:
            logits[f"{name}/has_image"] = has_image
    np.savez_compressed(os.path.join(OUT, "logits.npz"), **logits)
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
