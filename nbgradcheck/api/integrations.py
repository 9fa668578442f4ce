"""Record training runs of PyTorch, Keras and PyTorch Lightning into a ``LossHistory``.

Importing this module imports no framework: :class:`TorchRecorder` works on any object
with ``named_parameters()`` (importing torch only when first used), and the Keras and
Lightning callbacks are classes built on first call of :func:`keras_callback` and
:func:`lightning_callback`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from nbgradcheck.api.history import LossHistory
from nbgradcheck.training.history import LossRecorder

__all__ = ["TorchRecorder", "keras_callback", "lightning_callback"]


def _vector_norm(torch: Any, tensor: Any) -> Any:
    """Norm of a tensor on its device; half-precision tensors are summed in float32."""
    low_precision = tensor.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(tensor, dtype=torch.float32 if low_precision else None)


class TorchRecorder:
    """Records a ``torch.nn.Module``'s per-parameter gradient norms into a LossHistory.

    >>> recorder = TorchRecorder(model)               # doctest: +SKIP
    >>> for epoch in range(epochs):                   # doctest: +SKIP
    ...     for x, y in loader:
    ...         optimizer.zero_grad()
    ...         loss = loss_fn(model(x), y)
    ...         loss.backward()
    ...         optimizer.step()
    ...         recorder.log(loss, epoch=epoch)       # after backward(), grads still set
    >>> recorder.history                              # doctest: +SKIP

    Norms are computed on the parameters' device and copied as one small tensor.

    Args:
        module: the model (anything with ``named_parameters()``).
        history: where to record (default: a new :class:`LossHistory`; any
            :class:`~nbgradcheck.training.history.LossRecorder` will do).
        update_ratios: also record ``|θ − θ_prev| / |θ_prev|`` between calls; this keeps a
            copy of the parameters on their device, so switch it off for very large models.
    """

    def __init__(
        self, module: Any, history: LossRecorder | None = None, *, update_ratios: bool = True
    ) -> None:
        if not hasattr(module, "named_parameters"):
            raise TypeError(f"TorchRecorder needs a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.history = history if history is not None else LossHistory()
        self.update_ratios = update_ratios
        self._previous: dict[str, Any] = {}

    def _parameters(self) -> list[tuple[str, Any]]:
        return [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]

    def grad_norms(self) -> dict[str, float]:
        """Norm of each parameter's ``.grad`` (parameters without a gradient are left out)."""
        torch = importlib.import_module("torch")
        named = [(name, p.grad) for name, p in self._parameters() if p.grad is not None]
        if not named:
            return {}
        norms = [_vector_norm(torch, g.detach()) for _, g in named]
        values = torch.stack([n.to(norms[0].device, torch.float64) for n in norms]).cpu().tolist()
        return {name: float(v) for (name, _), v in zip(named, values, strict=True)}

    def update_norms(self) -> tuple[dict[str, float], dict[str, float]]:
        """``|θ − θ_prev|`` and ``|θ_prev|`` per parameter since the previous call."""
        torch = importlib.import_module("torch")
        updates, weights, current = [], [], {}
        names = []
        with torch.no_grad():
            for name, p in self._parameters():
                value = p.detach()
                previous = self._previous.get(name)
                current[name] = value.clone()
                if previous is None or previous.shape != value.shape:
                    continue
                names.append(name)
                updates.append(_vector_norm(torch, value - previous))
                weights.append(_vector_norm(torch, previous))
        self._previous = current
        if not names:
            return {}, {}
        device = updates[0].device
        both = torch.stack([t.to(device, torch.float64) for t in updates + weights]).cpu().tolist()
        return dict(zip(names, both[: len(names)], strict=True)), dict(
            zip(names, both[len(names) :], strict=True)
        )

    def log(
        self,
        loss: Any,
        *,
        epoch: int | float | None = None,
        step: int | None = None,
        grad_norms: Mapping[str, float] | None = None,
        **metrics: Any,
    ) -> None:
        """Record ``loss`` with the module's current gradient norms (or ``grad_norms``)."""
        updates, weights = self.update_norms() if self.update_ratios else ({}, {})
        self.history.log_norms(
            loss,
            epoch=epoch,
            step=step,
            grad_norms=self.grad_norms() if grad_norms is None else grad_norms,
            update_norms=updates,
            param_norms=weights,
            **metrics,
        )


def _scalar_logs(logs: Mapping[str, Any] | None) -> dict[str, float]:
    values = {}
    for name, value in (logs or {}).items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            continue
    return values


def keras_callback(
    history: LossRecorder | None = None, *, per_batch: bool = False, update_ratios: bool = False
) -> Any:
    """A ``keras.callbacks.Callback`` that records the training loss into ``history``.

    By default one record per epoch (loss and the other logged metrics, e.g. ``val_loss``);
    ``per_batch=True`` records every batch (Keras reports the running mean of the epoch
    there). Keras callbacks do not see gradients, so no gradient norms are recorded;
    ``update_ratios=True`` records the update/weight ratio of the trainable weights.
    The callback's ``history`` attribute is the LossHistory.
    """
    keras = importlib.import_module("keras")
    target = history if history is not None else LossHistory()

    class LossHistoryCallback(keras.callbacks.Callback):
        """Records Keras training logs into a nbgradcheck LossHistory."""

        def __init__(self) -> None:
            super().__init__()
            self.history = target
            self._epoch = 0

        def _params(self) -> dict[str, Any] | None:
            if not update_ratios:
                return None
            weights = self.model.trainable_weights
            return {w.path: keras.ops.convert_to_numpy(w) for w in weights}

        def _record(self, logs: Mapping[str, Any] | None) -> None:
            values = _scalar_logs(logs)
            if "loss" not in values:
                return
            loss = values.pop("loss")
            self.history.log(loss, epoch=self._epoch, params=self._params(), **values)

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            self._epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
            if per_batch:
                self._record(logs)

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            if not per_batch:
                self._record(logs)

    return LossHistoryCallback()


def _lightning_callback_base() -> type:
    try:
        return importlib.import_module("lightning.pytorch.callbacks").Callback
    except ImportError:
        return importlib.import_module("pytorch_lightning.callbacks").Callback


def lightning_callback(history: LossRecorder | None = None, *, update_ratios: bool = True) -> Any:
    """A PyTorch Lightning ``Callback`` recording loss and gradient norms per training step.

    Gradient norms are taken in ``on_before_optimizer_step`` (unscaled, after gradient
    accumulation); the loss, epoch and global step in ``on_train_batch_end``. Works with
    ``lightning`` or ``pytorch_lightning``. The callback's ``history`` attribute is the
    LossHistory.
    """
    base = _lightning_callback_base()
    target = history if history is not None else LossHistory()

    class LossHistoryCallback(base):
        """Records a LightningModule's training into a nbgradcheck LossHistory."""

        def __init__(self) -> None:
            super().__init__()
            self.history = target
            self._recorder: TorchRecorder | None = None
            self._grad_norms: dict[str, float] = {}

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._recorder = TorchRecorder(pl_module, self.history, update_ratios=update_ratios)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self._recorder is not None:
                self._grad_norms = self._recorder.grad_norms()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if loss is None or self._recorder is None:
                return
            self._recorder.log(
                loss,
                epoch=trainer.current_epoch,
                step=trainer.global_step,
                grad_norms=self._grad_norms,
            )
            self._grad_norms = {}

    return LossHistoryCallback()
