"""Framework integrations: PyTorch for real; Keras and Lightning where installed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from training_runs import deep_linear_task, mode_plateaus

from nbgradcheck.api.history import LossHistory
from nbgradcheck.api.integrations import TorchRecorder, keras_callback, lightning_callback

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: threads only add synchronisation (and stall on a busy 2-core machine)."""
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_importing_the_package_modules_imports_no_framework():
    code = (
        "import sys\n"
        "import nbgradcheck.api.integrations, nbgradcheck.api.history\n"
        "import nbgradcheck.views.lossplot\n"
        "import nbgradcheck.training.stalls\n"
        "heavy = [m for m in ('torch', 'keras', 'lightning', 'pytorch_lightning', 'jax',"
        " 'tensorflow', 'matplotlib.pyplot') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


def test_torch_recorder_needs_a_module():
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Module"):
        TorchRecorder([1, 2, 3])


# ---------------------------------------------------------------------------- PyTorch


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def test_torch_gradient_norms_and_update_ratios_are_exact():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchRecorder(model)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        recorder.log(loss, epoch=0)  # before the step: the update is the previous step's
        optimizer.step()
    expected = {n: float(p.grad.norm()) for n, p in model.named_parameters()}
    current = {n: p.detach() for n, p in model.named_parameters()}
    last_step = {n: -0.1 * p.grad for n, p in model.named_parameters()}
    ratios = {
        n: float((current[n] - last_step[n] - initial[n]).norm() / initial[n].norm())
        for n in initial
    }
    frame = recorder.history.to_frame()
    assert len(frame) == 2
    assert frame["loss"][1] == pytest.approx(loss.item())
    for name, value in expected.items():
        assert frame[f"grad_norm/{name}"][1] == pytest.approx(value, rel=1e-6)
    assert frame["grad_norm"][1] == pytest.approx(np.linalg.norm(list(expected.values())))
    for name, value in ratios.items():
        assert frame[f"update_ratio/{name}"][1] == pytest.approx(value, rel=1e-5)
    assert np.isnan(frame["update_ratio"][0])


def test_torch_recorder_skips_frozen_and_gradless_parameters():
    model = small_model()
    model[0].bias.requires_grad_(False)
    recorder = TorchRecorder(model, update_ratios=False)
    model(torch.randn(4, 3))[:, 0].sum().backward()
    recorder.log(1.0)
    columns = recorder.history.to_frame().columns
    assert "grad_norm/0.weight" in columns and "grad_norm/0.bias" not in columns
    assert "update_ratio" not in columns


def test_torch_bfloat16_gradients_are_measured_in_float32():
    model = small_model().to(torch.bfloat16)
    recorder = TorchRecorder(model)
    model(torch.randn(4, 3, dtype=torch.bfloat16)).sum().backward()
    recorder.log(torch.tensor(0.5, dtype=torch.bfloat16))
    row = recorder.history.to_frame().iloc[0]
    assert row["grad_norm/2.weight"] == pytest.approx(
        float(model[2].weight.grad.float().norm()), rel=1e-6
    )


def test_torch_deep_linear_network_from_small_init_shows_its_plateaus():
    """The Saxe et al. run again, now trained by torch autograd and recorded by the helper."""
    task = deep_linear_task()
    x = torch.tensor(task.x.T, dtype=torch.float64)
    y = torch.tensor(task.y.T, dtype=torch.float64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    ).double()
    with torch.no_grad():
        for layer in model:
            layer.weight.normal_(0.0, 1e-4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    recorder = TorchRecorder(model, LossHistory(), update_ratios=False)
    modes, epochs = [], []
    generator = torch.Generator().manual_seed(1)
    for epoch in range(400):
        for batch in torch.randperm(x.shape[0], generator=generator).split(64):
            optimizer.zero_grad()
            loss = 0.5 * ((model(x[batch]) - y[batch]) ** 2).sum(dim=1).mean()
            loss.backward()
            recorder.log(loss, epoch=epoch)
            optimizer.step()
            product = (model[1].weight @ model[0].weight).detach().numpy()
            modes.append(np.einsum("ia,ij,ja->a", task.left, product, task.right))
            epochs.append(epoch)
    plateaus, _ = mode_plateaus(np.array(modes), task.strengths, np.array(epochs))
    stalls = recorder.history.stalls
    assert len(stalls) == len(plateaus) == 3
    for (first, last), row in zip(plateaus, stalls.itertuples(), strict=True):
        inter = min(last, row.end) - max(first, row.start) + 1
        union = max(last, row.end) - min(first, row.start) + 1
        assert inter / union >= 0.7
    assert (stalls["likely_cause"] == "saddle/plateau").all()
    assert recorder.history.verdict == "converged"


# ---------------------------------------------------------------------------- Lightning


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras / lightning
def test_lightning_callback_records_loss_and_gradient_norms():
    import lightning.pytorch as pl

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    callback = lightning_callback()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Regression(), loader)
    frame = callback.history.to_frame()
    assert len(frame) == 12  # 3 epochs × 4 batches
    assert frame["epoch"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert frame["step"].tolist() == list(range(1, 13))
    assert frame[["grad_norm/net.weight", "grad_norm/net.bias"]].notna().all().all()
    assert frame["update_ratio"][1:].notna().all()
    assert frame["loss"].iloc[-1] < frame["loss"].iloc[0]


# ---------------------------------------------------------------------------- Keras


def keras_model(keras):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras / lightning
def test_keras_callback_records_one_row_per_epoch_with_metrics():
    import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    callback = keras_callback(update_ratios=True)
    keras_model(keras).fit(
        x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, callbacks=[callback]
    )
    frame = callback.history.to_frame()
    assert frame["epoch"].tolist() == [0, 1, 2, 3]
    assert frame["val_loss"].notna().all()
    assert frame["update_ratio"][1:].notna().all() and (frame["update_ratio"][1:] > 0).all()
    assert "grad_norm" not in frame  # Keras callbacks do not see gradients


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras / lightning
def test_keras_callback_per_batch():
    import keras

    x = np.ones((32, 3), dtype="float32")
    history = LossHistory()
    callback = keras_callback(history, per_batch=True)
    keras_model(keras).fit(x, x[:, :1], epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.history is history
    assert history.to_frame()["epoch"].tolist() == [0] * 4 + [1] * 4
