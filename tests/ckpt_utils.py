"""Helpers for the checkpoint / conversion / export tests: tiny tokenizers and tree comparisons."""

from __future__ import annotations

import io
import os

import numpy as np
from flax import traverse_util

WORDS = ("the cat sat on the mat while a dog ran after a red ball in the park near the river bank "
         "image caption instruction response assistant human below describes task").split()


def write_sentencepiece(path: str, vocab_size: int = 64) -> str:
    """Trains a tiny sentencepiece BPE model (BOS 1, EOS 2) and writes it to `path`; returns `path`."""
    import sentencepiece as spm

    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=8)) for _ in range(200)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree)


def assert_trees_equal(a, b, exact: bool = True, atol: float = 0.0):
    """Same leaf paths, shapes, dtypes; values equal (bit-exact, or within atol)."""
    fa, fb = flat(a), flat(b)
    assert set(fa) == set(fb), (sorted(set(fa) ^ set(fb)))[:10]
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.shape == y.shape, (k, x.shape, y.shape)
        if exact:
            assert x.dtype == y.dtype, (k, x.dtype, y.dtype)
            np.testing.assert_array_equal(x, y, err_msg=str(k))
        else:
            np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=atol, rtol=0,
                                       err_msg=str(k))


def random_params(model, seed: int = 0, scale: float = 0.2) -> dict:
    """Random values for every parameter of `model` in its dtypes (no init compile: from `abstract_params`).

    `scale` leaves (norms, adapter scales) are 1 + noise, everything else noise: nothing sits at identity.
    """
    import jax.numpy as jnp

    from lav2_jax.model.factory import abstract_params

    rng = np.random.default_rng(seed)
    out = {}
    for k, s in sorted(flat(abstract_params(model)).items()):
        x = scale * rng.standard_normal(s.shape)
        if k[-1] == "scale":
            x = 1.0 + x
        out[k] = jnp.asarray(x.astype(np.float32), s.dtype)
    return traverse_util.unflatten_dict(out)
