"""The release's top-p rule (docs/design.md §3.3.3) on hand-made distributions, and seeded sampling in `generate`."""

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.inference.sampling import sample_top_p, select_next, top_p_probs

# Deliberately not sorted: the rule works on the sorted order and must map back to vocabulary ids.
P = np.array([0.05, 0.5, 0.15, 0.3], np.float64)
LOGITS = jnp.asarray(np.log(P), jnp.float32)[None]


def rule(p: np.ndarray, top_p: float) -> np.ndarray:
    """docs/design.md §3.3.3 in numpy: sort desc, drop where cumsum - p_sorted > top_p, renormalise."""
    order = np.argsort(-p, kind="stable")
    s = p[order]
    s = np.where(np.cumsum(s) - s > top_p, 0.0, s)
    out = np.zeros_like(p)
    out[order] = s / s.sum()
    return out


def test_top_p_probs_match_the_rule():
    np.testing.assert_allclose(top_p_probs(LOGITS, 1.0, 0.75)[0], [0, 0.625, 0, 0.375], atol=1e-6)
    np.testing.assert_allclose(top_p_probs(LOGITS, 1.0, 0.85)[0], [0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95], atol=1e-6)
    np.testing.assert_allclose(top_p_probs(LOGITS, 1.0, 0.0)[0], [0, 1, 0, 0], atol=1e-6)  # the top token survives
    np.testing.assert_allclose(top_p_probs(LOGITS, 1.0, 1.0)[0], P, atol=1e-6)
    sharp = P ** 2 / np.sum(P ** 2)  # temperature 0.5 squares the probabilities
    np.testing.assert_allclose(top_p_probs(LOGITS, 0.5, 1.0)[0], sharp, atol=1e-6)
    np.testing.assert_allclose(top_p_probs(LOGITS, 0.5, 0.75)[0], rule(sharp, 0.75), atol=1e-6)


def test_sampled_distribution_matches_the_rule():
    n = 20000
    logits = jnp.broadcast_to(LOGITS, (n, 4))
    for temperature, top_p in ((1.0, 0.75), (1.0, 0.85), (0.5, 0.9)):
        expected = rule(P ** (1 / temperature) / np.sum(P ** (1 / temperature)), top_p)
        draws = np.asarray(sample_top_p(jax.random.PRNGKey(0), logits, temperature, top_p))
        freq = np.bincount(draws, minlength=4) / n
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12), (temperature, top_p, freq, expected)
        assert np.all(freq[expected == 0] == 0)  # masked tokens are never drawn
    again = np.asarray(sample_top_p(jax.random.PRNGKey(0), logits, 0.5, 0.9))
    np.testing.assert_array_equal(again, draws)  # a fixed key reproduces the draws


def test_greedy_is_argmax():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 3.0, 1.0]])
    np.testing.assert_array_equal(select_next(jax.random.PRNGKey(0), logits, 1.0, 0.75, greedy=True), [1, 0])
