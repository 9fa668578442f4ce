"""Batched evaluation: the torch tape (a one-element change carried through the layers),
its refusals, and the evaluation interface's arrays (partial results on Ctrl-C).

Every batched value is compared with the loop, which sets the element in place and calls
the loss: the two must agree to rounding for every element, both sides."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nbgradcheck as ng
from nbgradcheck.adapters import torch as adapter
from nbgradcheck.adapters.torch import TorchParameters, torch_parameter_set
from nbgradcheck.adapters.torch_tape import Tape
from nbgradcheck.core.evaluate import Outputs

DOUBLE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def batch_every_tensor(monkeypatch):
    """Small tensors batched too (by default the loop takes fewer than MIN_BATCH)."""
    monkeypatch.setattr(adapter, "MIN_BATCH", 1)


def mlp(sizes, activation=nn.Tanh, dtype=DOUBLE, seed=0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def batched_and_looped(params, closure, pass_argument=False, step=1e-3):
    """Every element of every parameter, both sides, batched and looped."""
    parameters = torch_parameter_set(params)
    parameters.bind_loss(closure, pass_argument)
    pairs, tapes = [], {}
    for position, shape in enumerate(parameters.shapes):
        indices = np.arange(int(np.prod(shape)))
        base = parameters.flat_values(position, indices).astype(np.float64)
        indices = np.tile(indices, 2)
        values = np.concatenate([base + step, base - step])
        batched = parameters.batched_losses(position, indices, values)
        tapes[parameters.names[position]] = parameters.tapes.get(position)
        pairs.append((batched, parameters.looped_losses(position, indices, values)))
    return parameters, pairs, tapes


def assert_same_losses(pairs, rtol=1e-13):
    for batched, looped in pairs:
        np.testing.assert_allclose(batched, looped, rtol=rtol, atol=0)


def is_tape(value):
    return isinstance(value, Tape)


# -- the tape carries the change ---------------------------------------------------------


@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, nn.GELU])
def test_mlp_losses_replayed_from_the_tape_equal_the_loop(activation):
    model = mlp((6, 9, 7, 4), activation)
    x, y = torch.randn(5, 6, dtype=DOUBLE), torch.randint(0, 4, (5,))
    parameters, pairs, tapes = batched_and_looped(
        model, lambda: nn.functional.cross_entropy(model(x), y)
    )
    assert parameters.batch_fallback is None and all(is_tape(t) for t in tapes.values())
    assert_same_losses(pairs)


def test_in_place_relu_is_replayed_out_of_place():
    model = mlp((5, 8, 6, 3), lambda: nn.ReLU(inplace=True))
    x = torch.randn(7, 5, dtype=DOUBLE)
    parameters, pairs, tapes = batched_and_looped(model, lambda: model(x).pow(2).mean())
    assert is_tape(tapes["0.weight"]) and parameters.batch_fallback is None
    assert_same_losses(pairs)


def test_hand_written_matmul_with_bias_and_a_dict_of_tensors():
    torch.manual_seed(1)
    params = {
        "W1": torch.randn(4, 6, dtype=DOUBLE),
        "b1": torch.randn(6, dtype=DOUBLE),
        "W2": torch.randn(6, 2, dtype=DOUBLE),
    }
    x = torch.randn(3, 4, dtype=DOUBLE)

    def loss(p):
        hidden = torch.tanh(x @ p["W1"] + p["b1"])
        return (hidden @ p["W2"]).exp().sum()

    _, pairs, tapes = batched_and_looped(params, loss, pass_argument=True)
    assert all(is_tape(t) for t in tapes.values())
    assert_same_losses(pairs)


class LinearFunction(torch.autograd.Function):
    """x Wᵀ + b with a hand-written backward and no setup_context: no vmap rule."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_weight = grad.t() @ x
        grad_weight[2, 1] *= 1.5  # the planted bug
        return grad @ weight, grad_weight, grad.sum(0)


def custom_function_model():
    torch.manual_seed(2)
    layer = nn.Linear(6, 8).double()
    head = nn.Linear(8, 3).double()
    model = nn.ModuleDict({"layer": layer, "head": head})
    x, y = torch.randn(10, 6, dtype=DOUBLE), torch.randint(0, 3, (10,))

    def closure():
        hidden = torch.tanh(LinearFunction.apply(x, layer.weight, layer.bias))
        return nn.functional.cross_entropy(head(hidden), y)

    return model, closure


def test_custom_function_without_setup_context_is_vectorized_anyway():
    model, closure = custom_function_model()
    parameters, pairs, tapes = batched_and_looped(model, closure)
    assert is_tape(tapes["layer.weight"]) and parameters.batch_fallback is None
    assert_same_losses(pairs)
    result = ng.check(closure, model, mode="full", progress=False)
    tensor = result.tensor("layer.weight")
    assert result.failing == ["layer.weight"]
    assert [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]] == [(2, 1)]


def test_weight_used_twice_and_a_residual_connection():
    model = mlp((5, 5, 5))
    x = torch.randn(4, 5, dtype=DOUBLE)

    def closure():
        hidden = torch.tanh(model[0](x))
        out = hidden + model[2](hidden)  # both operands depend on 0.weight
        return out.pow(2).mean() + 0.1 * model[0].weight.pow(2).sum()

    _, pairs, tapes = batched_and_looped(model, closure)
    assert is_tape(tapes["0.weight"])
    assert_same_losses(pairs)


def test_convolution_and_pooling_run_batched_under_vmap():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    ).double()
    x = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    parameters, pairs, tapes = batched_and_looped(model, lambda: model(x).pow(2).sum())
    assert is_tape(tapes["0.weight"]) and parameters.batch_fallback is None
    assert_same_losses(pairs, rtol=1e-12)


def test_float32_model_promoted_to_float64_replays_in_float64(monkeypatch):
    model = mlp((6, 10, 3), dtype=torch.float32)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    closure = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    calls = []
    replay = adapter.replay
    monkeypatch.setattr(adapter, "replay", lambda *a: calls.append(1) or replay(*a))
    batched = ng.check(closure, model, mode="full", progress=False)
    looped = ng.check(closure, TorchParameters(model, vectorize=False), mode="full", progress=False)
    assert calls and batched.verdict == looped.verdict == "correct"
    for name in batched.names:
        np.testing.assert_allclose(batched.numeric[name], looped.numeric[name], rtol=1e-7)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# -- refusals: the whole loss batched under vmap, or the loop --------------------------------


def test_a_value_read_into_python_refuses_the_tape_and_the_loop_takes_over():
    model = mlp((4, 3))
    x = torch.randn(5, 4, dtype=DOUBLE)

    def closure():
        out = model(x)
        return out.pow(2).sum() if out.sum().item() > -100 else out.sum()

    parameters, pairs, tapes = batched_and_looped(model, closure)
    assert "item" in tapes["0.weight"]
    assert parameters.batch_fallback is not None
    (note,) = parameters.evaluation_notes  # why it was slow, and how to batch it
    assert "one element at a time" in note and "Python branch" in note
    for batched, looped in pairs:
        np.testing.assert_array_equal(batched, looped)
    result = ng.check(closure, model, mode="full", progress=False)
    assert any("one element at a time" in n and "Python branch" in n for n in result.notes)


def test_batchnorm_in_training_mode_uses_each_copys_batch_statistics():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))
    model = model.double()
    x = torch.randn(8, 4, dtype=DOUBLE)
    _, pairs, tapes = batched_and_looped(model, lambda: model(x).pow(2).mean())
    assert is_tape(tapes["0.weight"])
    assert_same_losses(pairs, rtol=1e-12)


def test_an_in_place_change_of_a_constant_the_loss_used_refuses_the_tape():
    model = mlp((4, 3))
    x = torch.randn(5, 4, dtype=DOUBLE)

    def closure():
        scale = torch.ones(5, 3, dtype=DOUBLE)
        out = model(x) * scale
        scale.mul_(2.0)  # after its use: replaying would see the new value
        return (out * scale).sum()

    _, pairs, tapes = batched_and_looped(model, closure)
    assert "in place" in tapes["0.weight"]
    assert_same_losses(pairs)


def test_a_closure_over_its_own_parameter_reference_is_refused():
    model = mlp((5, 4))
    weight, x = model[0].weight, torch.randn(3, 5, dtype=DOUBLE)

    def closure():
        return torch.tanh(nn.functional.linear(x, weight, model[0].bias)).sum()

    _, pairs, tapes = batched_and_looped(model, closure)
    assert "functional_call" in tapes["0.weight"]
    assert_same_losses(pairs[:1])


# -- the evaluation interface: arrays in plan order -----------------------------------------


def test_outputs_fill_in_order_and_keep_what_a_task_recorded():
    outputs = Outputs()
    outputs.extend(0, [1.0, 2.0])
    outputs.extend(1, np.array([3.0]))
    outputs.extend(0, [4.0])
    assert outputs.filled == [3, 1] and outputs.evaluations == 4
    np.testing.assert_array_equal(outputs.recorded(0), [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(outputs.recorded(1), [3.0])


@pytest.mark.parametrize("sides", [(True, True), (True, False), (False, True)])
def test_outputs_hand_on_each_element_once_when_its_sides_are_recorded(sides):
    """Losses arriving in uneven runs (a batched chunk, a parallel task) are measured in
    plan order, each element once, as soon as every side it uses is in; an unused side is
    NaN; an element with one side missing (Ctrl-C between them) is never measured."""
    runs: list[tuple[int, np.ndarray, np.ndarray]] = []
    outputs = Outputs(sides, measure=lambda first, p, m: runs.append((first, p, m)))
    plus, minus = np.arange(10.0), -np.arange(10.0)
    for side, cuts in ((0, [0, 3, 4, 9]), (1, [0, 1, 7, 8])):
        if not sides[side]:
            continue
        source = (plus, minus)[side]
        for a, b in itertools.pairwise(cuts):
            outputs.extend(side, source[a:b])
    measured = sum(len(p) for _, p, _ in runs)
    expected = min(count for count, used in zip((9, 8), sides) if used)
    assert measured == expected and outputs.measured == expected
    assert [first for first, _, _ in runs] == list(
        np.cumsum([0] + [len(p) for _, p, _ in runs])[:-1]
    )
    got_plus = np.concatenate([p for _, p, _ in runs])
    got_minus = np.concatenate([m for _, _, m in runs])
    if sides[0]:
        np.testing.assert_array_equal(got_plus, plus[:expected])
    else:
        assert np.isnan(got_plus).all()
    if sides[1]:
        np.testing.assert_array_equal(got_minus, minus[:expected])
    else:
        assert np.isnan(got_minus).all()


def test_ctrl_c_during_batched_evaluation_keeps_the_chunks_done(monkeypatch):
    model = mlp((40, 60, 2))
    x = torch.randn(4, 40, dtype=DOUBLE)
    closure = lambda: model(x).pow(2).sum()  # noqa: E731
    before = [p.detach().clone() for p in model.parameters()]
    calls = {"n": 0}
    batched = adapter.TorchParameterSet.batched_losses

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk of 1024 elements of 0.weight
            raise KeyboardInterrupt
        return batched(self, *args)

    monkeypatch.setattr(adapter.TorchParameterSet, "batched_losses", interrupted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ng.check(closure, model, mode="full", progress=False)
    assert not result.complete
    done = result.tensor("0.weight").evaluated
    assert 0 < done.sum() < done.size and done[: done.sum()].all()  # a prefix, in order
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


# -- JAX: the jaxpr interpreted for a batch of copies -----------------------------------------


@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    from nbgradcheck.adapters.jax import enable_x64

    with enable_x64():
        yield jax


def jax_batched_and_looped(params, loss, step=1e-3):
    from nbgradcheck.adapters import jax as jax_adapter

    parameters = jax_adapter.jax_parameter_set(params)
    parameters.bind_loss(loss, True)
    pairs = []
    for position, shape in enumerate(parameters.shapes):
        indices = np.arange(int(np.prod(shape)))
        base = parameters.flat_values(position, indices)
        indices = np.tile(indices, 2)
        values = np.concatenate([base + step, base - step])
        batched = jax_adapter.JaxParameterSet.vmapped_losses(parameters, position, indices, values)
        pairs.append((batched, parameters.looped_losses(position, indices, values)))
    return parameters, pairs


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_jax_mlp_losses_carried_through_the_jaxpr_equal_the_loop(jax_x64, activation):
    jnp = jax_x64.numpy
    rng = np.random.default_rng(5)
    params = {
        "W1": jnp.asarray(rng.normal(size=(6, 9))),
        "b1": jnp.asarray(rng.normal(size=9)),
        "W2": jnp.asarray(rng.normal(size=(4, 9))),  # used transposed: x @ W2.T
        "b2": jnp.asarray(rng.normal(size=4)),
    }
    x, y = jnp.asarray(rng.normal(size=(5, 6))), jnp.asarray(rng.integers(0, 4, 5))
    act = {"tanh": jnp.tanh, "relu": jax_x64.nn.relu, "sigmoid": jax_x64.nn.sigmoid}[activation]

    def loss(p):
        hidden = act(x @ p["W1"] + p["b1"])
        logits = hidden @ p["W2"].T + p["b2"]
        log_p = jax_x64.nn.log_softmax(logits)
        data = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))
        return data + 1e-2 * jnp.sum(p["W1"] ** 2)  # W1 used twice

    parameters, pairs = jax_batched_and_looped(params, loss)
    assert parameters.batch_fallback is None
    assert_same_losses(pairs)


def test_jax_convolution_runs_batched_and_a_second_check_compiles_nothing(jax_x64):
    from nbgradcheck.adapters import jax as jax_adapter

    jnp = jax_x64.numpy
    rng = np.random.default_rng(6)
    params = {
        "kernel": jnp.asarray(rng.normal(size=(3, 2, 3, 3))),
        "w": jnp.asarray(rng.normal(size=3)),
    }
    images = jnp.asarray(rng.normal(size=(2, 2, 6, 6)))

    def loss(p):
        features = jax_x64.lax.conv(images, p["kernel"], (1, 1), "VALID")
        return jnp.sum(jnp.tanh(features).mean(axis=(2, 3)) @ p["w"])

    _, pairs = jax_batched_and_looped(params, loss)
    assert_same_losses(pairs, rtol=1e-12)
    compiled = dict(jax_adapter._compiled)
    _, again = jax_batched_and_looped(params, loss)
    assert dict(jax_adapter._compiled) == compiled  # the same executables, reused
    for (first, _), (second, _) in zip(pairs, again):
        np.testing.assert_array_equal(first, second)


def test_jax_loss_vmap_cannot_trace_falls_back_to_the_loop(jax_x64):
    jnp = jax_x64.numpy
    params = {"w": jnp.linspace(-1.0, 1.0, 40)}

    def loss(p):
        total = jnp.sum(p["w"] ** 2)
        return total if float(total) > 0 else -total  # a value read into Python

    from nbgradcheck.adapters.jax import jax_parameter_set

    parameters = jax_parameter_set(params)
    parameters.bind_loss(loss, True)
    indices = np.arange(40)
    values = parameters.flat_values(0, indices) + 1e-3
    batched = parameters.batched_losses(0, indices, values)
    assert parameters.batch_fallback is not None
    np.testing.assert_array_equal(batched, parameters.looped_losses(0, indices, values))
