"""The image-token splice (`lav2_jax.model.splice`) on a tiny random LLaVA: placement, masking, mixed batches,
several images per row, the KV cache, the CLIP feature layer, config checks and the `<image>` tokenizer rule.

The model's logits are checked against a hand splice (`model_utils.hand_splice`: text embeddings with the visual
tokens written at the placeholders by explicit index arithmetic, run through a text-only copy of the decoder), with
the visual tokens from the visual encoder alone (`VisualTokens`), at max-abs 1e-5 in float32."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckpt_utils import random_params, write_sentencepiece
from lav2_jax.core import presets
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core.config import AdapterConfig, SpliceConfig
from lav2_jax.data.image_prompt import ImagePromptTokenizer
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.model import splice
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.model.factory import build_model
from lav2_jax.model.kv_cache import init_cache
from lav2_jax.model.visual_tokens import VisualTokens
from model_utils import hand_splice, logits_from_embeddings

IMG = 250  # placeholder id inside the tiny vocabulary (256)
N_TOK = 16  # 32 px / 8 px patches, CLS dropped
VISION = presets.get_vision("tiny").replace(output_dim=0)


@pytest.fixture(scope="module")
def llava():
    s = SpliceConfig(image_token_id=IMG, n_tokens=N_TOK, max_images=2)
    model = build_model(presets.get_model("tiny"), presets.get_adapter("none").replace(splice=s), VISION)
    return model, random_params(model, seed=1)


@pytest.fixture(scope="module")
def fwd(llava):
    """One jitted forward `fwd(params, tokens, images=None, visual_tokens=None)` (eager Flax scans are slow)."""
    model, _ = llava
    return jax.jit(lambda p, t, images=None, visual_tokens=None: model.apply({"params": p}, t, images,
                                                                            visual_tokens=visual_tokens))


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 32, 32, 3)).astype(np.float32)


def _row(prefix, n_images, suffix):
    ids = list(prefix)
    for _ in range(n_images):
        ids += [IMG] * N_TOK + [7]
    return ids + list(suffix)


def test_labels_masked_at_image_positions():
    tokens = np.array([[1, 5] + [IMG] * 3 + [6, 7]])
    targets = np.concatenate([tokens[:, 1:], [[0]]], axis=1)
    mask = splice.mask_image_targets(targets, np.ones(targets.shape, np.float32), IMG)
    np.testing.assert_array_equal(mask, [[1, 0, 0, 0, 1, 1, 1]])  # predicting a placeholder carries no loss
    np.testing.assert_array_equal(splice.ignore_image_labels(tokens, tokens, IMG), [[1, 5, -100, -100, -100, 6, 7]])
    chex.assert_trees_all_equal(splice.image_target_mask(jnp.asarray(targets), IMG), jnp.asarray(mask))


@pytest.fixture(scope="module")
def encode(llava):
    """images [M, H, W, 3] → visual tokens [M, N_TOK, D] from the visual encoder alone (CLIP layer, projector)."""
    model, params = llava
    fn = jax.jit(VisualTokens.of(model).apply)
    return lambda images: np.asarray(fn({"params": params}, images))


def by_hand(llava, tokens, visual):
    """Logits of the hand splice: visual [B, N, N_TOK, D]."""
    model, params = llava
    x = hand_splice(params["tok_embeddings"]["embedding"], tokens, visual, IMG)
    return logits_from_embeddings(model, params, x)


def test_mixed_batch_rows_with_and_without_images(llava, fwd, encode):
    model, params = llava
    with_img = _row([1, 5], 1, [8, 9, 10])
    text = [1, 11, 12, 13, 14] + list(range(20, 20 + len(with_img) - 5))
    tokens = jnp.asarray([with_img, text])
    images = _images(2)
    both = fwd(params, tokens, images)
    vt = encode(images)  # row 1 holds no placeholder: its slot's tokens are never read
    np.testing.assert_allclose(np.asarray(both), by_hand(llava, tokens, vt[:, None]), rtol=0, atol=1e-5)
    other = fwd(params, tokens[:1], _images(1, seed=5))
    assert float(jnp.abs(other[0, N_TOK + 2:] - both[0, N_TOK + 2:]).max()) > 1e-3  # the image is read
    chex.assert_trees_all_close(other[0, :2], both[0, :2], atol=1e-5)  # ... only after its position (causal)


def test_image_k_fills_the_kth_placeholder_run(llava, fwd, encode):
    model, params = llava
    tokens = jnp.asarray([_row([1, 5], 2, [8, 9])])
    images = _images(2)[None]  # [1, 2, H, W, 3]
    vt = encode(images[0])
    chex.assert_shape(vt, (2, N_TOK, model.config.dim))
    out = fwd(params, tokens, images)
    np.testing.assert_allclose(np.asarray(out), by_hand(llava, tokens, vt[None]), rtol=0, atol=1e-5)
    swapped = fwd(params, tokens, np.ascontiguousarray(images[:, ::-1]))
    assert float(jnp.abs(swapped - out).max()) > 1e-3
    x = jnp.zeros((1, tokens.shape[1], model.config.dim))
    spliced = splice.splice_visual(x, tokens, jnp.asarray(vt)[None], IMG)
    chex.assert_trees_all_equal(spliced[0, 2:2 + N_TOK], jnp.asarray(vt[0]))
    chex.assert_trees_all_equal(spliced[0, 3 + N_TOK:3 + 2 * N_TOK], jnp.asarray(vt[1]))
    chex.assert_trees_all_equal(spliced[0, :2], x[0, :2])


def test_kv_cache_decode_equals_full_forward(llava, fwd):
    model, params = llava
    B, steps = 2, 4
    lengths = np.array([N_TOK + 5, 7])
    rng = np.random.default_rng(2)
    seq = rng.integers(3, 200, (B, int(lengths.max()) + steps)).astype(np.int32)
    seq[0, 2:2 + N_TOK] = IMG  # row 0: an image inside its prompt; row 1: text only
    seq = jnp.asarray(seq)
    images = _images(B)
    full = fwd(params, seq, images)
    T = int(lengths.max())
    cache = init_cache(model.config, model.adapter, B, 48)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    prefill = jax.jit(lambda p, t, im, pos, c: model.apply({"params": p}, t, im, positions=pos, cache=c))
    logits, cache = prefill(params, seq[:, :T], images, positions, cache)
    for b, n in enumerate(lengths):
        chex.assert_trees_all_close(logits[b, :n], full[b, :n], atol=1e-5)
    step = jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, positions=pos, cache=c, decode=True))
    for j in range(steps):
        pos = jnp.asarray(lengths + j, jnp.int32)[:, None]
        logits, cache = step(params, jnp.take_along_axis(seq, pos, axis=1), pos, cache)
        chex.assert_trees_all_close(logits, jnp.take_along_axis(full, pos[:, :, None], axis=1), atol=1e-5)


def test_clip_feature_layer_is_the_hidden_state(llava):
    _, params = llava
    tower = CLIPVisionTower(VISION)
    images = jnp.asarray(_images(2))
    _, hidden = jax.jit(lambda p, x: tower.apply({"params": p}, x, return_hidden_states=True))(params["clip"], images)
    for layer in (0, -2):
        got = jax.jit(lambda p, x, k=layer: tower.apply({"params": p}, x, feature_layer=k))(params["clip"], images)
        chex.assert_trees_all_close(got, hidden[layer], atol=1e-6)


def test_projector_trains_and_the_tower_does_not(llava):
    model, params = llava
    tokens = jnp.asarray([_row([1, 5], 1, [8, 9])])

    def loss(p):
        return model.apply({"params": p}, tokens, _images(1)).sum()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["clip"]))
    assert float(jnp.abs(grads["mm_projector"]["linear_1"]["kernel"]).max()) > 0


def test_placeholder_and_config_checks():
    assert splice.count_images(_row([1], 2, [3]), IMG, N_TOK) == 2
    with pytest.raises(ValueError, match="not multiples"):
        splice.count_images([1] + [IMG] * 5, IMG, N_TOK)
    with pytest.raises(ValueError, match="row 1: the prompt holds 0"):
        splice.check_placeholders(np.array([_row([1], 1, []), [1] * (N_TOK + 2)]), IMG, N_TOK, [1, 1])
    with pytest.raises(ValueError, match="n_tokens=10"):  # LLaVA's own check (System.check_configs)
        build_model(presets.get_model("tiny"), presets.get_adapter("none").replace(splice=SpliceConfig(n_tokens=10)),
                    VISION)
    with pytest.raises(ValueError, match="unknown system 'bogus'"):
        build_model(presets.get_model("tiny"), presets.get_adapter("none").replace(
            splice=SpliceConfig(system="bogus")), VISION)
    with pytest.raises(ValueError, match="visual_fusion must be 'none'"):
        AdapterConfig(splice=SpliceConfig())
    with pytest.raises(ValueError, match="projector"):
        SpliceConfig(projector="mlp3x")
    adapter = presets.get_adapter("none").replace(splice=SpliceConfig(n_tokens=N_TOK + 1, select="cls_patch"))
    assert adapter.system == "llava" and presets.get_adapter("paper").system == "lav2"
    cfg = CheckpointConfig(model=presets.get_model("tiny"), adapter=adapter, vision=VISION)
    assert CheckpointConfig.from_json(cfg.to_json()) == cfg


def test_image_prompt_tokenizer_split_rule(tmp_path):
    base = load_tokenizer(write_sentencepiece(str(tmp_path / "tokenizer.model")))
    tok = ImagePromptTokenizer(base, image_token_id=64, n_tokens=3)
    assert tok.rule == "split"
    ids = tok.encode("the cat<image>\nsat on the mat", bos=True)
    assert ids == [1] + base.encode("the cat") + [64] * 3 + base.encode("\nsat on the mat")
    assert tok.encode_continuation("a dog<image>") == base.encode_continuation("a dog") + [64] * 3
    assert tok.encode("the cat") == base.encode("the cat")
    assert tok.decode(ids[1:]) == base.decode(base.encode("the cat") + base.encode("\nsat on the mat"))


def test_inference_api_for_llama_adapter():
    """encode_images = the visual prompt tokens the model consumes; next_token_logits = the forward's last logits.

    The tiny LLaMA-Adapter V2 (release-bias adapters, tiny CLIP) gets host-side random parameters (nothing at
    identity, gates open) instead of `tiny_bundle`'s jitted init: no init compile, the same assertions."""
    import lav2_jax
    from generate_helpers import CharTokenizer, TinyBundle, random_images
    from model_utils import TINY

    model = build_model(TINY, presets.tiny_adapter("release-bias", TINY), presets.get_vision("tiny"))
    bundle = TinyBundle(model, random_params(model, seed=2), CharTokenizer())
    params = bundle.params
    images = random_images(2)
    vt = lav2_jax.encode_images(bundle, images)
    chex.assert_shape(vt, (2, model.adapter.query_len, model.config.dim))
    prompts = ["a cat", "the dog ran"]
    ids = [bundle.tokenizer.encode(p, bos=True) for p in prompts]
    tokens = np.zeros((2, 12), np.int32)
    for i, r in enumerate(ids):
        tokens[i, :len(r)] = r
    has = jnp.ones((2,), bool)
    fwd = jax.jit(lambda p, t, im, v: (model.apply({"params": p}, t, im, has),  # one compile for both forwards
                                       model.apply({"params": p}, t, None, has, visual_tokens=v)))
    full, from_tokens = fwd(params, tokens, jnp.asarray(images), jnp.asarray(vt))
    chex.assert_trees_all_close(from_tokens, full, atol=1e-5)
    _, blind = fwd(params, tokens, jnp.asarray(images), jnp.zeros_like(vt))  # the visual tokens matter
    assert float(jnp.abs(blind - full).max()) > 1e-3
    got = lav2_jax.next_token_logits(bundle, prompts, images=list(images))
    assert got.dtype == np.float32 and got.shape == (2, model.config.vocab_size)
    for i, r in enumerate(ids):
        np.testing.assert_allclose(got[i], np.asarray(full[i, len(r) - 1]), atol=1e-5, rtol=0)
