"""LossHistory: recording, gradient norms, update ratios, rich display and the live view."""

from __future__ import annotations

import ast
import base64
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.utils.capture import capture_output
from training_runs import deep_linear_run, xor_run

import nbgradcheck
from nbgradcheck.api.history import LossHistory
from nbgradcheck.training.history import LossRecorder
from nbgradcheck.training.stalls import find_stalls
from nbgradcheck.training.values import to_numpy
from nbgradcheck.views.live import LiveDisplay


class FakeTensor:
    """Quacks like a torch tensor: ``.detach().cpu().numpy()``."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32)
        self.calls = []

    def detach(self):
        self.calls.append("detach")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self

    def numpy(self):
        self.calls.append("numpy")
        return self.values


class ArrayLike:
    """Quacks like a JAX array: converted by ``np.asarray``."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordingOutput:
    def __init__(self):
        self.shown = []
        self.new_cells = 0

    def show(self, history):
        self.shown.append(len(history))

    def new_cell(self):
        self.new_cells += 1


def logged_run(run, **kwargs) -> LossHistory:
    history = LossHistory(**kwargs)
    for i, loss in enumerate(run.loss):
        grads = {name: norms[i] for name, norms in run.grad_norms.items()}
        history.log(loss, epoch=int(run.epoch[i]), grads=grads)
    return history


# ---------------------------------------------------------------------------- recording


def test_to_frame_has_one_row_per_log():
    history = LossHistory()
    history.log(1.0, epoch=0, lr=0.1)
    history.log(np.float32(0.5), epoch=0, lr=0.1, accuracy=0.6)
    history.log(0.25, epoch=1, step=10)
    frame = history.to_frame()
    assert list(frame.columns[:4]) == ["step", "epoch", "loss", "diverged"]
    assert frame["step"].tolist() == [0, 1, 10]
    assert frame["epoch"].tolist() == [0, 0, 1]
    assert frame["loss"].tolist() == [1.0, 0.5, 0.25]
    assert frame["lr"].tolist()[:2] == [0.1, 0.1] and math.isnan(frame["lr"][2])
    assert math.isnan(frame["accuracy"][0]) and frame["accuracy"][1] == 0.6
    assert len(history) == 3


def test_gradient_norms_per_tensor_and_in_total():
    rng = np.random.default_rng(0)
    grads = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    history = LossHistory()
    history.log(1.0, grads=grads)
    row = history.to_frame().iloc[0]
    assert row["grad_norm/W"] == pytest.approx(np.linalg.norm(grads["W"]))
    assert row["grad_norm/b"] == pytest.approx(np.linalg.norm(grads["b"]))
    everything = np.concatenate([g.ravel() for g in grads.values()])
    assert row["grad_norm"] == pytest.approx(np.linalg.norm(everything))


def test_update_ratio_compares_with_the_previous_parameters():
    history = LossHistory()
    w = np.array([3.0, 4.0])
    history.log(1.0, params={"w": w})
    w += np.array([0.03, 0.04])  # in place, as optimisers do: the history kept a copy
    history.log(0.9, params={"w": w, "b": np.ones(2)})
    frame = history.to_frame()
    assert math.isnan(frame["update_ratio"][0])
    assert frame["update_ratio/w"][1] == pytest.approx(0.01)
    assert frame["update_ratio"][1] == pytest.approx(0.01)  # b has no previous value yet
    assert "update_ratio/b" not in frame or math.isnan(frame["update_ratio/b"][1])


def test_tensors_and_array_likes_are_converted_by_duck_typing():
    tensor = FakeTensor([[1.0, 2.0], [2.0, 4.0]])
    history = LossHistory()
    history.log(FakeTensor(0.5), grads={"W": tensor}, params=[("W", ArrayLike([1.0, 0.0]))])
    history.log(ArrayLike(0.25), grads=[("W", ArrayLike([3.0, 4.0]))])
    frame = history.to_frame()
    assert frame["loss"].tolist() == [0.5, 0.25]
    assert frame["grad_norm/W"].tolist() == pytest.approx([5.0, 5.0])
    assert tensor.calls == ["detach", "cpu", "numpy"]


def test_bfloat16_like_tensors_are_converted_through_float():
    class BFloat16Tensor(FakeTensor):
        def numpy(self):
            raise TypeError("Got unsupported ScalarType BFloat16")

        def float(self):
            return FakeTensor(self.values)

    assert to_numpy(BFloat16Tensor([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_scalar_gradient_entries_are_norms():
    history = LossHistory()
    history.log(1.0, grads={"W": 3.0, "b": -4.0})
    assert history.to_frame()["grad_norm"][0] == pytest.approx(5.0)


def test_nan_and_inf_are_recorded_as_divergence():
    history = LossHistory()
    for loss in [1.0, 0.5, float("nan"), float("inf")]:
        history.log(loss)
    frame = history.to_frame()
    assert frame["diverged"].tolist() == [False, False, True, True]
    assert history.verdict in ("diverged", "too short")
    assert history.stalls["likely_cause"].tolist() == ["divergence"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h: h.log("0.5"), "loss must be a real number"),
        (lambda h: h.log(np.ones(3)), r"loss must be a single number, got shape \(3,\)"),
        (lambda h: h.log(None), "loss must be a real number"),
        (lambda h: h.log(1.0, accuracy="high"), "metric 'accuracy' must be a real number"),
        (lambda h: h.log(1.0, grads=[1.0, 2.0]), "grads must be a dict"),
        (lambda h: h.log(1.0, grads={"W": "abc"}), "cannot take the norm"),
        (lambda h: h.log(1.0, epoch="one"), "epoch must be a real number"),
    ],
)
def test_bad_values_raise_clear_errors(call, message):
    history = LossHistory()
    with pytest.raises(ValueError, match=message):
        call(history)
    assert len(history) == 0


def test_stalls_of_a_history_are_find_stalls_of_its_data():
    run = deep_linear_run(epochs=250)
    history = logged_run(run)
    expected = find_stalls(run.loss, epochs=run.epoch, grad_norms=run.grad_norm)
    pd.testing.assert_frame_equal(history.stalls, expected, check_like=True)
    assert len(history.stalls) == 3
    assert history.stalls.attrs["verdict"] == expected.attrs["verdict"]


def test_stall_options_are_used():
    run = xor_run()
    history = logged_run(run, stall_options={"window": 301})
    assert history.report.window == 301
    history.stall_options["window"] = 51
    assert history.report.window == 51


def test_empty_history_explains_itself():
    history = LossHistory()
    assert "nothing logged yet" in repr(history)
    assert "nothing logged yet" in history._repr_mimebundle_()["text/html"]
    with pytest.raises(ValueError, match="empty"):
        history.stalls  # noqa: B018


def test_from_frame_round_trips_to_frame():
    run = xor_run(epochs=300)
    history = logged_run(run)
    copy = LossHistory.from_frame(history.to_frame())
    pd.testing.assert_frame_equal(copy.to_frame(), history.to_frame())


# ---------------------------------------------------------------------------- display


def test_rich_display_has_text_and_html_with_plot_and_stall_table():
    history = logged_run(xor_run())
    bundle = history._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "1 stall |" in bundle["text/plain"] and "saddle/plateau" in bundle["text/plain"]
    html = bundle["text/html"]
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert 'class="dataframe nbgradcheck-stalls"' in html
    assert "<td>saddle/plateau</td>" in html


def test_text_summary_outside_notebooks():
    history = logged_run(deep_linear_run(epochs=250))
    text = history.summary()
    first_line = text.splitlines()[0]
    assert first_line.startswith("LossHistory: 1000 steps, epoch 249 | loss ")
    assert "3 stalls" in first_line
    assert "1. epochs 0–" in text and "2. epochs" in text and "3. epochs" in text


# ---------------------------------------------------------------------------- live view


def test_live_updates_are_rate_bounded():
    history = LossHistory()
    clock, output = FakeClock(), RecordingOutput()
    history._live = LiveDisplay(history, every=1.0, output=output, clock=clock)
    for i in range(1000):
        clock.now = i * 0.01  # 100 logs per second, for 10 seconds
        history.log(1.0 / (i + 1))
    assert output.shown[0] == 1  # the first log is shown at once
    assert len(output.shown) == 10
    assert all(b - a == 100 for a, b in zip(output.shown, output.shown[1:], strict=False))
    history.finish()
    assert output.shown[-1] == 1000  # the final state is shown
    assert history._live is None


def test_slow_drawing_never_takes_more_than_half_the_time():
    history = LossHistory()
    clock = FakeClock()

    class SlowOutput(RecordingOutput):
        def show(self, history):
            super().show(history)
            clock.now += 3.0  # drawing takes 3 s, three times `every`

    output = SlowOutput()
    history._live = LiveDisplay(history, every=1.0, output=output, clock=clock)
    for i in range(600):
        clock.now += 0.1
        history.log(1.0 / (i + 1))
    drawing = 3.0 * len(output.shown)
    assert drawing <= 0.5 * clock.now + 3.0
    assert len(output.shown) >= 9  # but it still updates


def test_context_manager_flushes_the_last_state():
    clock, output = FakeClock(), RecordingOutput()
    with LossHistory() as history:
        history._live = LiveDisplay(history, every=60.0, output=output, clock=clock)
        for i in range(50):
            history.log(1.0 / (i + 1))
    assert output.shown == [1, 50]


def test_text_mode_prints_status_lines(capsys):
    history = LossHistory().live(mode="text", every=3600)
    for i in range(20):
        history.log(1.0 / (i + 1), epoch=i // 5)
    history.finish()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("LossHistory: 1 step, epoch 0 |")
    assert lines[1].startswith("LossHistory: 20 steps, epoch 3 | loss 0.05")


def test_auto_mode_outside_a_kernel_is_text():
    history = LossHistory(live=True)
    assert type(history._live.output).__name__ == "_TextOutput"
    with pytest.raises(ValueError, match="mode must be"):
        LossHistory().live(mode="widget")
    with pytest.raises(ValueError, match="every"):
        LossHistory().live(every=-1)


def test_live_display_updates_one_display_in_a_real_ipython_shell(ip):
    ip.push({"LossHistory": LossHistory, "np": np})
    cell = (
        "h = LossHistory().live(mode='display', every=3600)\n"
        "print('other output of the cell')\n"
        "for i in range(200):\n"
        "    h.log(np.exp(-i / 50), epoch=i // 10)\n"
    )
    with capture_output() as captured:
        result = ip.run_cell(cell)
    assert result.success
    outputs = captured.outputs
    # one display when training starts, one in-place update when the cell ends
    assert len(outputs) == 2
    ids = {output.transient["display_id"] for output in outputs}
    assert len(ids) == 1
    assert [output.update for output in outputs] == [False, True]
    assert "LossHistory: 1 step, epoch 0 |" in outputs[0].data["text/plain"]
    assert "LossHistory: 200 steps" in outputs[1].data["text/plain"]
    assert "image/png;base64" in outputs[1].data["text/html"]
    assert "other output of the cell" in captured.stdout  # nothing was cleared
    assert ip.user_ns["h"]._live._shell is None  # the cell-end hook removed itself


def test_a_later_cell_opens_a_new_display(ip):
    ip.push({"LossHistory": LossHistory})
    ip.run_cell("h2 = LossHistory().live(mode='display', every=3600)\nh2.log(1.0)")
    with capture_output() as captured:
        ip.run_cell("for i in range(5): h2.log(0.5)")
    assert len(captured.outputs) == 2
    assert captured.outputs[0].update is False  # a new display in this cell
    assert "6 steps" in captured.outputs[1].data["text/plain"]


def test_live_rendering_leaves_no_pyplot_figures():
    from matplotlib import _pylab_helpers

    history = logged_run(xor_run(epochs=300))
    buffer = io.StringIO()
    history._repr_mimebundle_()
    print(history, file=buffer)
    assert _pylab_helpers.Gcf.get_all_fig_managers() == []


# ---------------------------------------------------------------------------- culprits


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h: h.log(float("nan"), epoch=float("nan")), r"^epoch must be a finite number"),
        (lambda h: h.log(1.0, epoch=np.inf), r"^epoch must be a finite number, got inf$"),
        (lambda h: h.log(1.0, step=1.5), r"^step must be a whole number, got 1\.5$"),
        (lambda h: h.log(1.0, step="3"), r"^step must be a real number, got '3'$"),
        (lambda h: h.log(True), r"^loss must be a real number, got True$"),
        (lambda h: h.log(1.0, grads={"W": None}), r"norm of grads\['W'\]"),
        (lambda h: h.log(1.0, params={"b": "zero"}), r"^params\['b'\] must be an array"),
        (lambda h: h.log(1.0, grads=7), r"^grads must be a dict .*got int$"),
        (lambda h: h.log_norms(1.0, grad_norms={"W": "x"}), r"^grad_norms\['W'\] must be"),
        (lambda h: h.from_losses([1.0, 0.5], epochs=[0]), r"^epochs has 1 values but losses"),
        (lambda h: h.from_losses([1.0, "a"]), r"found 'a' at position 1$"),
    ],
)
def test_bad_values_name_the_culprit_in_one_line(call, message):
    history = LossHistory()
    history.log(2.0, params={"b": np.zeros(2)})  # a previous state the bad call must keep
    before = history.to_frame()
    with pytest.raises(ValueError, match=message) as raised:
        call(history)
    assert "\n" not in str(raised.value)
    pd.testing.assert_frame_equal(history.to_frame(), before)
    assert list(history._previous_params) == ["b"]


def test_torch_tensors_that_require_grad_are_logged():
    import torch

    weight = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = (weight**2).sum()
    loss.backward()
    history = LossHistory()
    history.log(loss, epoch=torch.tensor(0), grads={"w": weight.grad}, params={"w": weight})
    history.log(loss * 0.5, epoch=1, grads={"w": weight * 1.0}, params={"w": weight * 1.1})
    frame = history.to_frame()
    assert frame["loss"].tolist() == [25.0, 12.5]
    assert frame["grad_norm"].tolist() == pytest.approx([10.0, 5.0])
    assert frame["update_ratio"][1] == pytest.approx(0.1)


def test_epochs_are_nullable_integers_and_fractions_stay_floats():
    history = LossHistory()
    history.log(1.0)
    history.log(0.5, epoch=1)
    epochs = history.to_frame()["epoch"]
    assert str(epochs.dtype) == "Int64"
    assert epochs.isna().tolist() == [True, False] and epochs[1] == 1
    fractional = LossHistory.from_losses([1.0, 0.5], epochs=[0.5, 1.0])
    assert fractional.to_frame()["epoch"].tolist() == [0.5, 1.0]


# ---------------------------------------------------------------------------- layers

TRAINING = Path(nbgradcheck.__file__).parent / "training"
FORBIDDEN = ("matplotlib", "IPython", "ipywidgets", "nbgradcheck.views", "nbgradcheck.api")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            modules |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return modules


@pytest.mark.parametrize("path", sorted(TRAINING.glob("*.py")), ids=lambda p: p.name)
def test_the_training_layer_imports_no_views_and_no_display_library(path):
    imported = imported_modules(path)
    assert "numpy" in imported or path.name == "__init__.py"
    bad = {m for m in imported if m.startswith(FORBIDDEN) or m.startswith("nbgradcheck.notebook")}
    assert bad == set()


def test_training_modules_load_without_display_libraries():
    code = (
        "import sys\n"
        "import nbgradcheck.training.history, nbgradcheck.training.stalls\n"
        "print(sorted(m for m in ('matplotlib', 'IPython', 'ipywidgets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_pure_recorder_is_what_the_public_history_extends():
    recorder = LossRecorder.from_losses([1.0, 0.5, 0.25])
    assert not hasattr(recorder, "_repr_mimebundle_") and not hasattr(recorder, "live")
    assert recorder.summary().startswith("LossRecorder: 3 steps |")
    public = nbgradcheck.LossHistory.from_losses([1.0, 0.5, 0.25])
    assert isinstance(public, LossRecorder) and public.summary().startswith("LossHistory: 3")
    pd.testing.assert_frame_equal(public.to_frame(), recorder.to_frame())
