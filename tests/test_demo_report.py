"""The demo's report.png draws what its labels say: each loss curve is its own group's loss from the metrics log,
each gate curve its own layer's opening (checked on the figure's line data, not on pixels)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lav2_jax.demo import report  # noqa: E402

ROWS = [
    {"step": 1, "loss/caption": 4.0, "loss/instruction": 9.0, "gate/adapter": [0.0, 0.1, 0.2], "gate/visual": [0.5]},
    {"step": 2, "loss/caption": 3.0, "loss/instruction": 8.0, "gate/adapter": [0.0, 0.3, 0.4], "gate/visual": [0.6]},
    {"step": 3, "loss/caption": 2.0, "loss/instruction": 7.0, "gate/adapter": [0.0, 0.5, 0.6], "gate/visual": [0.7]},
]


def _drawn_lines(tmp_path, monkeypatch) -> dict[str, np.ndarray]:
    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    sample = (np.zeros((8, 8, 3), np.uint8), "a red square", "a red square", True)
    out = report.plot(str(tmp_path / "report.png"), ROWS, [sample], prompted_layers=[1, 2])
    assert out == str(tmp_path / "report.png") and (tmp_path / "report.png").stat().st_size > 0
    (fig,) = closed
    lines = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
            lines[line.get_label()] = np.asarray(line.get_ydata(), float)
    return lines


def test_each_curve_plots_its_own_series(tmp_path, monkeypatch):
    lines = _drawn_lines(tmp_path, monkeypatch)
    np.testing.assert_array_equal(lines["caption batches → caption group"], [4.0, 3.0, 2.0])
    np.testing.assert_array_equal(lines["instruction batches → instruction group"], [9.0, 8.0, 7.0])
    np.testing.assert_array_equal(lines["adapter prompt gate, layer 1"], [0.1, 0.3, 0.5])
    np.testing.assert_array_equal(lines["adapter prompt gate, layer 2"], [0.2, 0.4, 0.6])
    np.testing.assert_array_equal(lines["visual prompt gate, layer 0"], [0.5, 0.6, 0.7])
    assert len(lines) == 5
