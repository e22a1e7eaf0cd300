"""The linear learning-rate decay (`decay="linear"`, the HF Trainer default mPLUG-Owl's released stage 2 uses) next
to the project's warm-up + cosine, and the Owl stage-2 configs that select it."""

import importlib.util

import numpy as np
import pytest

from lav2_jax.train import optimizer as optim


def _config(name, *args):
    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(*args)


def test_linear_decay_is_a_straight_line_after_warmup():
    lin, cos = optim.warmup_cosine(2.0, 10, 110, decay="linear"), optim.warmup_cosine(2.0, 10, 110)
    steps = np.array([0, 5, 10, 35, 60, 85, 110, 200])
    np.testing.assert_allclose([float(lin(s)) for s in steps], [0.0, 1.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose([float(cos(s)) for s in steps[:3]], [0.0, 1.0, 2.0], atol=1e-6)  # same warm-up
    assert float(cos(35)) == pytest.approx(2.0 * 0.5 * (1 + np.cos(np.pi / 4)), abs=1e-6)
    with pytest.raises(ValueError, match="decay"):
        optim.warmup_cosine(1.0, 0, 10, decay="step")


def test_owl_stage2_configs_decay_linearly():
    for c in (_config("owl_stage2_7b"), _config("demo_owl", "stage2")):
        groups = {g: dict(c.optim[g]) for g in optim.TRAINABLE_GROUPS}
        assert all(g["decay"] == "linear" for g in groups.values())
        total, warm = int(c.total_steps), int(c.optim.instruction.warmup_steps)
        lr = c.optim.instruction.base_lr
        at = lambda s: optim.group_learning_rates(groups, total, 256, s)["instruction"]  # noqa: E731
        assert at(warm) == pytest.approx(lr) and at(total) == pytest.approx(0.0, abs=1e-12)
        assert at((warm + total) // 2) == pytest.approx(lr * (1 - ((warm + total) // 2 - warm) / (total - warm)))
