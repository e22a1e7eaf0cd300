"""mPLUG-Owl's vision model, visual abstractor and in-place splice (docs/design.md §5.1–5.3).

Proves, in float32 at max-abs ≤ 1e-5: the vision model and the abstractor reproduce a numpy reference written from
docs/design.md §5.1–5.2 on released-format tensors; the per-head `[q_h, k_h, v_h]` layout differs from CLIP's blocked
`[q; k; v]` (hand-checked permutation; the unpermuted weights give another answer); CLIP weights mapped with the
re-order reproduce Hugging Face `CLIPVisionModel` (post-LN on every token) and our CLIP tower (`… @ proj`) when
the eps agree; the abstractor's residual is taken from the *normed* queries; each image gives queries + 1 tokens
(the last is `vit_eos`), written in place over its placeholders without changing the sequence length
(the logits equal a hand splice run through a text-only copy of the decoder, `model_utils.hand_splice`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from lav2_jax.checkpoint.convert.clip import clip_plan, open_clip
from lav2_jax.systems.owl.convert import abstractor_plan, clip_owl_plan, owl_vision_plan
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.core.config import AdapterConfig
from lav2_jax.systems.owl.abstractor import VisualAbstractor
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.systems.owl.visual import owl_splice
from lav2_jax.systems.owl.vision import OwlVisionModel, blocked_to_per_head, per_head_to_blocked
from ckpt_writers import hf_clip, hf_llama, openai_clip_state_dict
from model_utils import hand_splice, logits_from_embeddings
from owl_writers import ABSTRACTOR, LLM, VISION, materialize, ref_abstractor, ref_vision, released_owl_state

ATOL = 1e-5


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(released state dict, our owl_vision and abstractor subtrees converted from it)."""
    sd = released_owl_state(hf_llama(LLM))
    path = tmp_path_factory.mktemp("owl") / "owl.bin"
    torch.save(sd, path)
    f = TensorFile(str(path))
    by_key = {k: f for k in f.keys()}
    plan = owl_vision_plan(VISION, by_key, "t") + abstractor_plan(ABSTRACTOR, LLM.dim, by_key, "t")
    params = traverse_util.unflatten_dict(materialize(plan))
    return sd, params


def _images(batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, VISION.image_size, VISION.image_size, 3)).astype(
        np.float32)


@functools.lru_cache(maxsize=None)
def _vision_apply():
    return jax.jit(OwlVisionModel(VISION).apply)


def test_qkv_layout_is_per_head():
    heads, hd = 2, 2  # rows of CLIP's in_proj: q0 q1 q2 q3 | k0 k1 k2 k3 | v0 v1 v2 v3 (head h = dims 2h, 2h+1)
    blocked = np.array(["q0", "q1", "q2", "q3", "k0", "k1", "k2", "k3", "v0", "v1", "v2", "v3"])
    want = np.array(["q0", "q1", "k0", "k1", "v0", "v1", "q2", "q3", "k2", "k3", "v2", "v3"])
    np.testing.assert_array_equal(blocked_to_per_head(blocked, heads), want)
    w = np.arange(3 * heads * hd * 5).reshape(3 * heads * hd, 5)
    np.testing.assert_array_equal(per_head_to_blocked(blocked_to_per_head(w, heads), heads), w)


def test_vision_matches_reference(released):
    sd, params = released
    images = _images()
    ours = np.asarray(_vision_apply()({"params": params["owl_vision"]}, images))
    ref = ref_vision(sd, images)
    assert ours.shape == (2, VISION.num_tokens, VISION.width)  # CLS + patches, all post-layernormed
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()
    # CLIP's blocked q;k;v reading of the same rows is another model
    blocked = jax.tree.map(lambda x: x, params["owl_vision"])
    qkv = blocked["layers"]["self_attn"]["query_key_value"]
    qkv["kernel"] = np.stack([per_head_to_blocked(k.T, VISION.heads).T for k in qkv["kernel"]])
    qkv["bias"] = np.stack([per_head_to_blocked(b, VISION.heads) for b in qkv["bias"]])
    other = np.asarray(_vision_apply()({"params": blocked}, images))
    assert np.abs(other - ref).max() > 1e-2


def test_clip_weights_reproduce_clip(tmp_path):
    v = VISION.replace(layer_norm_eps=1e-5, output_dim=24)  # eps aligned with the CLIP being converted
    hf = hf_clip(v, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    torch.save(openai_clip_state_dict(hf), tmp_path / "clip.pt")
    images = _images(seed=4)
    with torch.no_grad():
        h = hf.vision_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
        hf_all = hf.vision_model.post_layernorm(h).numpy()  # post-LN on every token, CLS included
    outs = {}
    for src in ("hf", "clip.pt"):
        fmt, by_key, _ = open_clip(str(tmp_path / src))
        owl = traverse_util.unflatten_dict(materialize(clip_owl_plan(v, by_key, fmt, src)))["owl_vision"]
        outs[fmt] = np.asarray(OwlVisionModel(v).apply({"params": owl}, images))
        assert np.abs(outs[fmt] - hf_all).max() <= ATOL, (fmt, np.abs(outs[fmt] - hf_all).max())
        clip = traverse_util.unflatten_dict(materialize(clip_plan(v, by_key, fmt, src)))["clip"]
        tokens = np.asarray(CLIPVisionTower(v).apply({"params": clip}, images))  # ln_post(all) @ proj
        assert np.abs(outs[fmt] @ np.asarray(clip["proj"]) - tokens).max() <= ATOL
    np.testing.assert_allclose(outs["hf"], outs["openai"], rtol=0, atol=1e-6)


def test_abstractor_matches_reference(released):
    sd, params = released
    visual = np.random.default_rng(2).standard_normal((3, VISION.num_tokens, VISION.width)).astype(np.float32)
    abstractor = VisualAbstractor(ABSTRACTOR, LLM.dim)
    apply = jax.jit(abstractor.apply)
    ours = np.asarray(apply({"params": params["abstractor"]}, visual))
    ref = ref_abstractor(sd, visual)
    assert ours.shape == (3, ABSTRACTOR.num_queries + 1, LLM.dim)
    assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()
    np.testing.assert_array_equal(ours[:, -1], np.broadcast_to(sd["abstractor.vit_eos"].numpy()[0], (3, LLM.dim)))
    dropped = np.asarray(abstractor.apply({"params": params["abstractor"]}, visual,
                                          rngs={"dropout": jax.random.key(0)}))
    assert np.abs(dropped - ours).max() > 1e-3  # attention dropout only with a dropout rng (training)


def test_residual_from_normed_queries(released):
    """With out_proj and w2 zeroed and an identity visual_fc, each layer maps x to norm1(x) exactly."""
    _, params = released
    p = jax.tree.map(np.array, params["abstractor"])
    lay = p["layers"]
    for name in ("out_proj",):
        lay[name]["kernel"][:] = 0
        lay[name]["bias"][:] = 0
    lay["mlp"]["w2"]["kernel"][:] = 0
    lay["mlp"]["w2"]["bias"][:] = 0
    p["visual_fc"] = {"kernel": np.eye(ABSTRACTOR.width, dtype=np.float32),
                      "bias": np.zeros(ABSTRACTOR.width, np.float32)}
    p["vit_eos"] = np.zeros(ABSTRACTOR.width, np.float32)
    visual = np.random.default_rng(5).standard_normal((1, VISION.num_tokens, VISION.width)).astype(np.float32)
    out = np.asarray(VisualAbstractor(ABSTRACTOR, ABSTRACTOR.width).apply({"params": p}, visual))[0]

    def ln(x, s, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * s + b

    want = p["query_tokens"].astype(np.float64)
    for i in range(ABSTRACTOR.layers):
        want = ln(want, lay["norm1"]["scale"][i], lay["norm1"]["bias"][i])
    np.testing.assert_allclose(out[:-1], want, rtol=0, atol=ATOL)
    assert np.abs(out[:-1] - p["query_tokens"]).max() > 0.1  # a raw-query residual would give the queries back


def test_visual_tokens_spliced_in_place(released):
    _, owl = released
    adapter = AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0,
                            visual_fusion="none", splice=owl_splice(ABSTRACTOR))
    model = build_model(LLM, adapter, VISION)
    params = {**init_params(model, jax.random.key(0)), **owl}
    n_tok = ABSTRACTOR.num_queries + 1
    pid = adapter.splice.image_token_id
    row = [1, 7, 9] + [pid] * n_tok + [11, 12, 13, 14]
    tokens = jnp.asarray([row, row], jnp.int32)
    images = _images(2, seed=7)
    logits = jax.jit(model.apply)({"params": params}, tokens, images[:, None])
    assert logits.shape == (2, len(row), LLM.vocab_size)  # the sequence length is unchanged
    feats = _vision_apply()({"params": owl["owl_vision"]}, images)
    visual = VisualAbstractor(ABSTRACTOR, LLM.dim).apply({"params": owl["abstractor"]}, feats)
    # by hand: the row's text embeddings with image b's Q + 1 tokens written over its placeholders, in order
    x = hand_splice(params["tok_embeddings"]["embedding"], tokens, np.asarray(visual)[:, None], pid)
    np.testing.assert_array_equal(x[:, 3:3 + n_tok], np.asarray(visual))
    np.testing.assert_allclose(np.asarray(logits), logits_from_embeddings(model, params, x), rtol=0, atol=ATOL)
    # causal: positions before <image> do not see the image; the row with another image differs after it
    np.testing.assert_allclose(np.asarray(logits[0, :3]), np.asarray(logits[1, :3]), rtol=0, atol=ATOL)
    assert np.abs(np.asarray(logits[0, 3:] - logits[1, 3:])).max() > 1e-3
