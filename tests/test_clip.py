"""CLIPVisionTower (docs/design.md §3.2.1, §7.5): parity with Hugging Face `CLIPVisionModel`, shapes, jit, remat,
dtypes."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl.testing import absltest
from ckpt_writers import hf_clip

from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.core.presets import get_vision

TINY = get_vision("tiny")
BATCH = 2


def _hf_model(seed: int = 0):
    """A random HF vision transformer sized like the `tiny` preset; every weight perturbed (norms, biases too)."""
    return hf_clip(TINY, seed).vision_model


def hf_to_params(state_dict: dict, proj: np.ndarray) -> dict:
    """HF `CLIPVisionModel` state dict (no `vision_model.` prefix) + projection [width, out] → our param tree."""
    sd = {k.removeprefix("vision_model."): v.detach().numpy() for k, v in state_dict.items()}
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    ln = lambda pre: {"scale": sd[f"{pre}.weight"], "bias": sd[f"{pre}.bias"]}
    lin = lambda pre: {"kernel": sd[f"{pre}.weight"].T, "bias": sd[f"{pre}.bias"]}
    layers = []
    for i in range(n_layers):
        pre = f"encoder.layers.{i}"
        layers.append({
            "ln_1": ln(f"{pre}.layer_norm1"), "ln_2": ln(f"{pre}.layer_norm2"),
            "attn": {n: lin(f"{pre}.self_attn.{n}_proj") for n in ("q", "k", "v", "out")},
            "mlp": {"c_fc": lin(f"{pre}.mlp.fc1"), "c_proj": lin(f"{pre}.mlp.fc2")},
        })
    return {
        "conv1": {"kernel": sd["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)},
        "class_embedding": sd["embeddings.class_embedding"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_pre": ln("pre_layrnorm"),
        "resblocks": jax.tree.map(lambda *xs: np.stack(xs), *layers),
        "ln_post": ln("post_layernorm"),
        "proj": proj,
    }


def _images(seed: int = 1, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, TINY.image_size, TINY.image_size, 3), np.float32)


@functools.lru_cache(maxsize=None)
def _params(config=TINY, seed: int = 0):
    init = jax.jit(CLIPVisionTower(config).init)
    return nn.unbox(init(jax.random.key(seed), jnp.zeros((1, config.image_size, config.image_size, 3)))["params"])


def test_hf_parity_hidden_states_and_tokens():
    hf = _hf_model()
    proj = (np.random.default_rng(2).standard_normal((TINY.width, TINY.output_dim)) * TINY.width ** -0.5).astype(
        np.float32)  # CLIP-like scale: tokens O(1), so 1e-5 absolute is a meaningful bound
    params = hf_to_params(hf.state_dict(), proj)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, _params())  # the map covers our tree exactly

    images = _images()
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
        hf_tokens = (hf.post_layernorm(out.last_hidden_state) @ torch.from_numpy(proj)).numpy()
    hf_hidden = np.stack([h.numpy() for h in out.hidden_states])

    tokens, hidden = CLIPVisionTower(TINY).apply({"params": params}, images, return_hidden_states=True)
    chex.assert_shape(hidden, (TINY.layers + 1, BATCH, TINY.num_tokens, TINY.width))
    np.testing.assert_allclose(np.asarray(hidden), hf_hidden, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tokens), hf_tokens, rtol=0, atol=1e-5)
    assert np.abs(hf_tokens).max() > 1.0  # non-trivial magnitudes, so the tolerance means something


def test_param_tree_layout():
    params = _params()
    d, m, p, t, L = TINY.width, int(TINY.width * TINY.mlp_ratio), TINY.patch_size, TINY.num_tokens, TINY.layers
    shapes = {jax.tree_util.keystr(k, simple=True, separator="/"): v.shape
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
    assert shapes == {
        "conv1/kernel": (p, p, 3, d), "class_embedding": (d,), "positional_embedding": (t, d),
        "ln_pre/scale": (d,), "ln_pre/bias": (d,), "ln_post/scale": (d,), "ln_post/bias": (d,),
        "proj": (d, TINY.output_dim),
        **{f"resblocks/{n}/{w}": (L, d) for n in ("ln_1", "ln_2") for w in ("scale", "bias")},
        **{f"resblocks/attn/{n}/kernel": (L, d, d) for n in ("q", "k", "v", "out")},
        **{f"resblocks/attn/{n}/bias": (L, d) for n in ("q", "k", "v", "out")},
        "resblocks/mlp/c_fc/kernel": (L, d, m), "resblocks/mlp/c_fc/bias": (L, m),
        "resblocks/mlp/c_proj/kernel": (L, m, d), "resblocks/mlp/c_proj/bias": (L, d),
    }


class CLIPVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes(self):
        params = _params()
        model = CLIPVisionTower(TINY)
        tokens_fn = self.variant(lambda p, x: model.apply({"params": p}, x))
        hidden_fn = self.variant(lambda p, x: model.apply({"params": p}, x, return_hidden_states=True))
        images = _images(batch=3)
        tokens = tokens_fn(params, images)
        chex.assert_shape(tokens, (3, TINY.num_tokens, TINY.output_dim))
        tokens2, hidden = hidden_fn(params, images)
        chex.assert_shape(hidden, (TINY.layers + 1, 3, TINY.num_tokens, TINY.width))
        np.testing.assert_allclose(np.asarray(tokens), np.asarray(tokens2), rtol=0, atol=1e-6)
        chex.assert_tree_all_finite(tokens)


def test_remat_full_matches_none():
    params, images = _params(), jnp.asarray(_images())
    cot = jax.random.normal(jax.random.key(3), (BATCH, TINY.num_tokens, TINY.output_dim))

    def run(policy):
        model = CLIPVisionTower(TINY.replace(remat_policy=policy))
        loss = lambda p, x: jnp.sum(model.apply({"params": p}, x) * cot)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, images)

    (v_none, g_none), (v_full, g_full) = run("none"), run("full")
    np.testing.assert_allclose(v_full, v_none, rtol=1e-6)
    chex.assert_trees_all_close(g_full, g_none, atol=1e-5, rtol=1e-5)  # float reassociation only
    assert float(jnp.abs(g_none[0]["resblocks"]["attn"]["q"]["kernel"]).max()) > 0


def test_bf16_weights_and_compute():
    config = TINY.replace(weight_dtype="bfloat16", dtype="bfloat16")
    params = _params(config)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tokens = jax.jit(CLIPVisionTower(config).apply)({"params": params}, _images())
    assert tokens.dtype == jnp.bfloat16
    ref = jax.jit(CLIPVisionTower(TINY).apply)({"params": jax.tree.map(lambda x: x.astype(jnp.float32), params)},
                                               _images())
    # bf16 compute against the float32 forward of the same (bf16-rounded) weights: no float32 bound applies. The
    # tokens (|y| < 3.4 here) carry the bf16 rounding of every layer; measured over 4 image seeds: max-abs
    # 0.016–0.021, relative L2 error 0.47–0.53%. Bounds: 0.04 max-abs and 1% relative L2.
    tokens, ref = np.asarray(tokens, np.float32), np.asarray(ref)
    np.testing.assert_allclose(tokens, ref, rtol=0, atol=0.04)
    assert np.linalg.norm(tokens - ref) / np.linalg.norm(ref) < 0.01


def test_wrong_image_size_raises():
    with pytest.raises(ValueError, match="32x32"):
        CLIPVisionTower(TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


if __name__ == "__main__":
    absltest.main()
