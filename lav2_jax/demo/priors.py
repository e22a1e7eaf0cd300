"""The demo's frozen parts, made meaningful before the adapters are trained, and saved as checkpoints.

1. Language prior: a tiny LLaMA (`MODEL`, the `tiny` preset with the demo tokenizer's vocabulary) trained with
   every LLaMA weight free (embeddings, attention, FFN, norms, head; AdamW, warmup + cosine) on the demo's text
   (`lav2_jax.demo.data.prior_texts`): next-token loss over whole templated documents concatenated into rows of
   `seq_len` tokens, no images. It learns the templates, the caption grammar, which words answer which question,
   the text-only instructions' answers, and (from the scenes described in words) to read attribute values from its
   context: what the visual prompts must later supply.
2. Vision tower: the `tiny` CLIP ViT trained contrastively, CLIP-style, against text embeddings of every caption:
   an image's embedding (the mean of all its output tokens, L2-normalised: what the connector sees before it has
   learned where to attend) scores all `len(combinations)` captions, whose embeddings are sums of one learned
   vector per attribute value (a bag-of-words text tower), and a softmax cross-entropy with a learned temperature
   pulls each image to its own caption. Reported: held-out top-1
   retrieval accuracy per attribute (the signal the frozen tower hands the connector).

`build_base(paths, ...)` runs both and writes, in the project's checkpoint format (`lav2_jax.checkpoint`):

  <workdir>/prior/   the language model alone (adapter `none`, no vision): `lav2 export hf` reads it
  <workdir>/base/    prior LLaMA + trained CLIP + the paper adapter at its identity init: what `lav2 train`
                     freezes (`config.model.base_checkpoint`); the adapters trained later start from here

Initialisation (`fan_in_init`, `PriorSettings.init="fan-in"`): every LLaMA, CLIP and connector kernel is drawn
from N(0, 1/fan_in) instead of the library's N(0, 0.02) (LLaMA's std, sized for dim 4096). At the tiny preset's
width 0.02 is ~6x too small: a circuit that copies a word from the context (value, output and head kernels) starts
near zero and grows slowly, so a prior of a few hundred steps read count and position but no colour or shape, the
contrastive tower named shapes less well, and the connector learned colour only late. The connector's kernels
are re-drawn the same way; its gates stay zero, so `base/` is still the identity adapter.

Both are cached: `base/config.json` records the stage settings (`meta.demo_prior`), and a rerun with the same
settings skips the stages.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lav2_jax.checkpoint import read_config, save_pretrained
from lav2_jax.core import presets
from lav2_jax.core import param_groups as pg
from lav2_jax.data.images import normalize
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.demo import scenes as sc
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.model.factory import abstract_params, build_model, init_params
from lav2_jax.train.loss import mean_token_loss

TINY_ADAPTER = "paper"


@dataclasses.dataclass(frozen=True)
class PriorSettings:
    lm_steps: int = 250
    lm_batch: int = 32
    lm_lr: float = 5e-3
    clip_steps: int = 400
    clip_batch: int = 64
    clip_lr: float = 5e-3
    seq_len: int = 64
    seed: int = 0
    init: str = "fan-in"  # kernels N(0, 1/fan_in) ("fan-in") or the library's N(0, 0.02) ("default")


def demo_model(vocab_size: int):
    """The demo's model: `tiny` LLaMA (vocabulary = the tokenizer's), `tiny` CLIP, the paper adapter shrunk."""
    config = presets.get_model("tiny").replace(vocab_size=vocab_size)
    vision = presets.get_vision("tiny")
    return build_model(config, presets.tiny_adapter(TINY_ADAPTER, config, vision), vision)


def fan_in_init(tree: dict, key) -> dict:
    """`tree` with every `kernel` leaf re-drawn from N(0, 1/fan_in): fan_in = the product of all but the last axis
    for a conv kernel [P, P, C, D], else the second-to-last axis (dense [in, out], stacked [L, in, out])."""
    flat = traverse_util.flatten_dict(tree)
    for i, (k, v) in enumerate(sorted(flat.items())):
        if k[-1] == "kernel":
            fan_in = int(np.prod(v.shape[:-1])) if v.ndim == 4 else v.shape[-2]
            flat[k] = (jax.random.normal(jax.random.fold_in(key, i), v.shape, jnp.float32)
                       / np.sqrt(fan_in)).astype(v.dtype)
    return traverse_util.unflatten_dict(flat)


def initial_params(model, s: PriorSettings) -> dict:
    """The demo model's starting parameters: the library init, then (`s.init == "fan-in"`) `fan_in_init` on the
    LLaMA layers and head, the CLIP tower and the connector (embeddings and norms keep the library init)."""
    params = init_params(model, jax.random.PRNGKey(s.seed))
    if s.init == "fan-in":
        key = jax.random.PRNGKey(s.seed + 1)
        params = dict(params)
        for i, name in enumerate(("layers", "output", "clip", "connector")):
            params[name] = fan_in_init(params[name], jax.random.fold_in(key, i))
    elif s.init != "default":
        raise ValueError(f"PriorSettings.init={s.init!r}: expected 'fan-in' or 'default'")
    return params


def _pack(tok, texts: list[str], seq_len: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """Documents → tokens/targets [N, seq_len]: every document as BOS text EOS, in a shuffled order, concatenated
    into one stream and cut into rows (language-model pretraining style: no padding; a row may end mid-document)."""
    stream = []
    for i in np.random.default_rng(seed).permutation(len(texts)):
        stream += tok.encode(texts[int(i)], bos=True, eos=True)
    n = (len(stream) - 1) // seq_len
    ids = np.asarray(stream[:n * seq_len + 1], np.int32)
    return ids[:-1].reshape(n, seq_len), ids[1:].reshape(n, seq_len)


def _adamw(lr: float, steps: int):
    return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.05),
                       b1=0.9, b2=0.95, weight_decay=0.01)


def _fit(loss_fn, params, x: np.ndarray, y: np.ndarray, lr: float, steps: int, batch: int, seed, what: str, log):
    """AdamW (`_adamw`) on `loss_fn(params, x_batch, y_batch)` over random batches of (x, y); returns params."""
    tx = _adamw(lr, steps)

    @jax.jit
    def step(p, opt, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt, rng = tx.init(params), np.random.default_rng(seed)
    t0, loss = time.time(), float("nan")
    for i in range(steps):
        idx = rng.integers(len(x), size=batch)
        params, opt, loss = step(params, opt, x[idx], y[idx])
        if (i + 1) % max(1, steps // 4) == 0:
            log(f"{what}: step {i + 1}/{steps}  loss {float(loss):.3f}")
    log(f"{what}: {steps} steps in {time.time() - t0:.0f} s, final loss {float(loss):.3f}")
    return params


def train_language_prior(model, params: dict, tok, texts: list[str], s: PriorSettings, log=print) -> dict:
    """Full-parameter next-token training of the LLaMA weights (not CLIP, not the adapter); returns all params."""
    labels = pg.param_groups(params, "all-adapters", model.adapter)
    labels = traverse_util.unflatten_dict({k: ("instruction" if v == pg.F and k[0] != "clip" else pg.F)
                                           for k, v in traverse_util.flatten_dict(labels).items()})
    lm, rest = pg.split(params, labels, ("instruction",))
    tokens, targets = _pack(tok, texts, s.seq_len, [s.seed, 12])

    def loss_fn(lm, tokens, targets):
        full = pg.merge(lm, rest)
        hidden = model.apply({"params": full}, tokens, return_hidden=True)
        return mean_token_loss(hidden, full["output"]["kernel"], targets, jnp.ones(targets.shape, jnp.float32))

    lm = _fit(loss_fn, lm, tokens, targets, s.lm_lr, s.lm_steps, s.lm_batch, [s.seed, 11], "language prior", log)
    return pg.merge(lm, rest)


COMBOS = tuple(itertools.product(*sc.ATTRIBUTES.values()))


def _combo_index(scene: sc.Scene) -> int:
    return COMBOS.index(tuple(scene.attribute(a) for a in sc.ATTRIBUTES))


def _images(scenes: list[sc.Scene], size: int) -> np.ndarray:
    return np.stack([normalize(sc.render(s, size)) for s in scenes])


def train_vision_tower(vision, clip_params: dict, train: list[sc.Scene], heldout: list[sc.Scene],
                       s: PriorSettings, log=print) -> tuple[dict, dict]:
    """Contrastive stage (module docstring); returns (CLIP params, held-out retrieval accuracy per attribute)."""
    tower = CLIPVisionTower(vision)
    dim = vision.output_dim
    key = jax.random.PRNGKey(s.seed + 5)
    text = {a: 0.1 * jax.random.normal(jax.random.fold_in(key, i), (len(v), dim))
            for i, (a, v) in enumerate(sc.ATTRIBUTES.items())}
    value_ids = jnp.asarray([[sc.ATTRIBUTES[a].index(v) for a, v in zip(sc.ATTRIBUTES, c)] for c in COMBOS])
    # From scratch the tower's positional embedding (CLIP's init, std 0.01) is too faint to learn "left" from
    # "right" in a short stage; a unit-scale start makes position as easy to pick up as colour.
    clip_params = dict(clip_params, positional_embedding=jax.random.normal(
        jax.random.fold_in(key, 99), clip_params["positional_embedding"].shape, jnp.float32).astype(
        clip_params["positional_embedding"].dtype))
    trainable = {"clip": clip_params, "text": text, "log_scale": jnp.asarray(np.log(10.0), jnp.float32)}

    def scores(p, images):
        emb = tower.apply({"params": p["clip"]}, images).mean(axis=1)  # what a uniform-attention connector sees
        emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
        t = sum(p["text"][a][value_ids[:, i]] for i, a in enumerate(sc.ATTRIBUTES))
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        return jnp.exp(p["log_scale"]) * jnp.einsum("BD,CD->BC", emb, t)

    def loss_fn(p, images, labels):
        return optax.softmax_cross_entropy_with_integer_labels(scores(p, images), labels).mean()

    x_train = _images(train, vision.image_size)
    y_train = np.asarray([_combo_index(t) for t in train], np.int32)
    trainable = _fit(loss_fn, trainable, x_train, y_train, s.clip_lr, s.clip_steps, s.clip_batch, [s.seed, 13],
                     "vision tower (contrastive)", log)
    pred = np.asarray(jnp.argmax(jax.jit(scores)(trainable, _images(heldout, vision.image_size)), -1))
    truth = [_combo_index(h) for h in heldout]
    acc = {a: float(np.mean([COMBOS[p][i] == COMBOS[t][i] for p, t in zip(pred, truth)]))
           for i, a in enumerate(sc.ATTRIBUTES)}
    acc["all"] = float(np.mean(pred == np.asarray(truth)))
    log("vision tower: held-out retrieval accuracy "
        + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    return trainable["clip"], acc


def _language_only(model, params: dict):
    """(text-only model with no adapter, its parameters taken from `params`)."""
    lm = build_model(model.config, presets.get_adapter("none"), None)
    flat = traverse_util.flatten_dict(params)
    wanted = traverse_util.flatten_dict(abstract_params(lm))
    return lm, traverse_util.unflatten_dict({k: flat[k] for k in wanted})


def build_base(paths, texts: list[str], train_scenes: list[sc.Scene], s: PriorSettings, log=print) -> dict:
    """Runs (or reuses) both stages; writes `prior/` and `base/`; returns the stage report."""
    base_dir, prior_dir = os.path.join(paths.workdir, "base"), os.path.join(paths.workdir, "prior")
    tok = load_tokenizer(paths.tokenizer)
    settings = json.loads(json.dumps({**dataclasses.asdict(s), "texts": len(texts), "images": len(train_scenes),
                                      "vocab": tok.vocab_size}))
    if os.path.exists(os.path.join(base_dir, "config.json")) and os.path.exists(os.path.join(prior_dir,
                                                                                               "config.json")):
        meta = read_config(base_dir).meta.get("demo_prior", {})
        if meta.get("settings") == settings:
            log(f"priors: reusing {base_dir} (language prior and vision tower already trained)")
            return dict(meta["report"], cached=True)
    t0 = time.time()
    model = demo_model(tok.vocab_size)
    params = initial_params(model, s)
    params = train_language_prior(model, params, tok, texts, s, log)
    with open(paths.heldout, encoding="utf-8") as f:
        heldout = [sc.Scene(**{k: v for k, v in d.items() if k != "image"}) for d in json.load(f)["scenes"]]
    params["clip"], retrieval = train_vision_tower(model.vision, params["clip"], train_scenes, heldout, s, log)
    report = {"time_s": time.time() - t0, "vision_retrieval": retrieval, "cached": False}
    lm, lm_params = _language_only(model, params)
    save_pretrained(prior_dir, lm, lm_params, tokenizer=paths.tokenizer, overwrite=True,
                    meta={"demo_prior": {"stage": "language prior"}})
    save_pretrained(base_dir, model, params, tokenizer=paths.tokenizer, overwrite=True,
                    meta={"demo_prior": {"settings": settings, "report": report}})
    log(f"priors: wrote {prior_dir} and {base_dir} in {report['time_s']:.0f} s")
    return report
