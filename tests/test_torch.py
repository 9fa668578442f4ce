"""The PyTorch adapter: modules, lists and dicts of tensors, custom autograd Functions,
buffers, dropout, float32, vectorized evaluation, bad input and exact restore."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.adapters.registry import framework_of  # noqa: E402
from nbgradcheck.adapters.torch import TorchParameters, torch_parameter_set  # noqa: E402
from nbgradcheck.adapters.torch_tape import Tape  # noqa: E402

DOUBLE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add latency (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- models ------------------------------------------------------------------------------


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with a hand-written backward; ``bug`` plants a mistake in it."""

    @staticmethod
    def forward(ctx, x, weight, bias, bug):
        ctx.save_for_backward(x, weight)
        ctx.bug = bug
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_weight = grad.t() @ x
        grad_bias = grad.sum(0)
        if ctx.bug == "element":
            grad_weight[1, 2] *= 1.5
        elif ctx.bug == "transpose_scale":
            grad_weight = grad_weight * 1.01
        elif ctx.bug == "bias_sign":
            grad_bias = -grad_bias
        return grad @ weight, grad_weight, grad_bias, None


class CustomLinear(nn.Module):
    def __init__(self, inputs: int, outputs: int, bug: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(outputs, inputs) / inputs**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(outputs))
        self.bug = bug

    def forward(self, x):
        return LinearFunction.apply(x, self.weight, self.bias, self.bug)


class Net(nn.Module):
    """custom linear → tanh → BatchNorm → dropout → linear (BatchNorm after the nonlinearity,
    so fc1.bias has a gradient: right before BatchNorm in training mode it would be 0)."""

    def __init__(self, bug: str | None = None, dropout: float = 0.0, batchnorm: bool = True):
        super().__init__()
        self.fc1 = CustomLinear(6, 8, bug)
        self.bn = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(self.bn(torch.tanh(self.fc1(x)))))


def make_net(bug=None, dropout=0.0, batchnorm=True, dtype=DOUBLE, seed=0):
    torch.manual_seed(seed)
    net = Net(bug, dropout, batchnorm).to(dtype)
    x = torch.randn(16, 6, dtype=dtype)
    y = torch.randint(0, 3, (16,))
    return net, lambda: nn.functional.cross_entropy(net(x), y)


def make_mlp(sizes=(5, 7, 4), dtype=DOUBLE, seed=0, batch=8):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
    x = torch.randn(batch, sizes[0], dtype=dtype)
    y = torch.randn(batch, sizes[-1], dtype=dtype)
    return model, lambda: ((model(x) - y) ** 2).mean()


def check(loss, params, grads=None, **options):
    """ng.check with the torch defaults (grads from autograd, full mode, no bar).

    A user-defined ``nn.Module`` subclass is wrapped in TorchParameters when the dispatch
    does not yet recognise it by its base classes (see test_module_subclass_dispatch).
    """
    if isinstance(params, nn.Module) and framework_of(params) != "torch":
        params = TorchParameters(params)
    options.setdefault("mode", "full")
    options.setdefault("progress", False)
    return ng.check(loss, params, grads, **options)


def raw_bytes(tensor):
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.cpu().numpy().tobytes()


def state_bits(module_or_tensors):
    """Every parameter, buffer and .grad of a module (or list of tensors) as bytes."""
    if isinstance(module_or_tensors, nn.Module):
        items = list(module_or_tensors.state_dict(keep_vars=True).items())
    else:
        items = [(str(i), t) for i, t in enumerate(module_or_tensors)]
    bits = {}
    for name, tensor in items:
        bits[name] = (tensor.dtype, tuple(tensor.shape), raw_bytes(tensor.detach()))
        grad = getattr(tensor, "grad", None)
        bits[name + ".grad"] = None if grad is None else raw_bytes(grad)
    return bits


# -- modules, lists and dicts ------------------------------------------------------------


def test_module_subclass_dispatch():
    net, _ = make_net()
    if framework_of(net) != "torch":
        pytest.xfail("adapters.framework_of does not look at base classes yet (report)")
    assert framework_of(net) == "torch"


def test_correct_module_passes_with_names_and_unchanged_state():
    net, closure = make_net()
    before = state_bits(net)
    result = check(closure, net)
    assert result.passed and result.verdict == "correct"
    assert result.names == [
        "fc1.weight",
        "fc1.bias",
        "bn.weight",
        "bn.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    assert result.n_checked == result.n_parameters == sum(p.numel() for p in net.parameters())
    assert state_bits(net) == before  # parameters, running statistics, .grad


def test_buggy_custom_function_found_on_exactly_its_element():
    net, closure = make_net(bug="element")
    result = check(closure, net)
    assert not result.passed and result.failing == ["fc1.weight"]
    tensor = result.tensor("fc1.weight")
    failing = tensor.indices[tensor.element_failing]
    assert [tensor.multi_index(int(i)) for i in failing] == [(1, 2)]
    assert tensor.worst_position is not None
    assert tensor.multi_index(int(tensor.indices[tensor.worst_position])) == (1, 2)


@pytest.mark.parametrize(
    ("bug", "culprit"), [("transpose_scale", "fc1.weight"), ("bias_sign", "fc1.bias")]
)
def test_whole_tensor_bugs_in_a_custom_function(bug, culprit):
    net, closure = make_net(bug=bug, batchnorm=False)
    result = check(closure, net)
    assert result.failing == [culprit]
    if bug == "transpose_scale":  # relative difference of a factor c: |c − 1| / (|c| + 1)
        assert result.tensor(culprit).difference == pytest.approx(0.01 / 2.01, rel=1e-4)


def test_parameter_list_with_closure_and_dict_with_loss_argument():
    torch.manual_seed(1)
    w = torch.randn(3, 4, dtype=DOUBLE, requires_grad=True)
    b = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    x = torch.randn(5, 4, dtype=DOUBLE)
    before = state_bits([w, b])
    result = check(lambda: torch.sin(x @ w.t() + b).sum(), [w, b])
    assert result.passed and result.names == ["p0", "p1"]
    result = check(lambda p: torch.sin(x @ p["w"].t() + p["b"]).sum(), {"w": w, "b": b})
    assert result.passed and result.names == ["w", "b"]
    assert state_bits([w, b]) == before


def test_single_tensor_and_loss_returning_a_tuple():
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=DOUBLE, requires_grad=True)
    result = check(lambda t: (torch.sin(t).sum(), "aux"), theta)
    assert result.passed and result.names == ["theta"]


def test_user_given_gradients_by_name_with_d_prefix_and_in_order():
    model, closure = make_mlp()
    grads = dict(
        zip(
            [f"d{n}" for n, _ in model.named_parameters()],
            torch.autograd.grad(closure(), list(model.parameters())),
        )
    )
    assert check(closure, model, grads).passed
    assert check(closure, model, list(grads.values())).passed
    wrong = dict(grads)
    wrong["d2.bias"] = 2 * wrong["d2.bias"]
    assert check(closure, model, wrong).failing == ["2.bias"]


def test_frozen_parameters_are_not_checked():
    model, closure = make_mlp()
    model[0].weight.requires_grad_(False)
    result = check(closure, model)
    assert result.passed and result.names == ["0.bias", "2.weight", "2.bias"]


def test_closure_that_calls_backward_itself_keeps_user_grads():
    model, loss = make_mlp()

    def closure():  # the optimizer-closure pattern
        value = loss()
        value.backward()
        return value

    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = state_bits(model)
    result = check(closure, model)
    assert result.passed
    assert state_bits(model) == before


# -- buffers, dropout and randomness -----------------------------------------------------


def test_batchnorm_running_statistics_are_bit_identical_after_a_check():
    net, closure = make_net()
    net.bn.momentum = None  # cumulative average: num_batches_tracked matters too
    closure()  # running statistics away from their initial values
    before = state_bits(net)
    result = check(closure, net)
    assert result.passed
    assert state_bits(net) == before
    assert int(net.bn.num_batches_tracked) == 1


def test_dropout_is_detected_and_checked_with_seed():
    net, closure = make_net(dropout=0.3)
    with pytest.raises(ng.RandomLossError, match="seed"):
        check(closure, net)
    result = check(closure, net, seed=0)
    assert result.passed


def test_dropout_gradient_bug_is_found_with_seed():
    net, closure = make_net(bug="element", dropout=0.2)
    result = check(closure, net, seed=3)
    assert result.failing == ["fc1.weight"]


def test_dropout_switched_off_for_the_check_and_modes_restored():
    net, closure = make_net(dropout=0.3)
    before = state_bits(net)
    rng_before = torch.get_rng_state()
    result = check(closure, TorchParameters(net, dropout=False))
    assert result.passed and net.drop.training and net.training
    assert state_bits(net) == before
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_seed_leaves_global_rng_states_as_they_were():
    net, closure = make_net(dropout=0.3)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    check(closure, net, seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


# -- float32 -----------------------------------------------------------------------------


@pytest.mark.parametrize("float64", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_float32_correct_model_passes(seed, float64):
    net, closure = make_net(dtype=torch.float32, seed=seed)
    before = state_bits(net)
    result = check(closure, TorchParameters(net, float64=float64))
    assert result.passed, result.table
    assert result.tensor("fc1.weight").dtype == (np.float64 if float64 else np.float32)
    assert state_bits(net) == before


@pytest.mark.parametrize("float64", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_float32_planted_bug_fails_on_its_tensor(seed, float64):
    net, closure = make_net(bug="element", dtype=torch.float32, seed=seed)
    result = check(closure, TorchParameters(net, float64=float64))
    assert result.failing == ["fc1.weight"]


class SmallElementBug(torch.autograd.Function):
    """Identity on a weight whose backward scales dW[1, 2] by 1.01: below float32's floor."""

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[1, 2] *= 1.01
        return grad


def small_bug_model(seed=0):
    model, _ = make_mlp(sizes=(8, 16, 4), dtype=torch.float32, seed=seed, batch=32)
    model.insert(2, nn.BatchNorm1d(16))  # after tanh: 0.bias keeps a gradient
    x = torch.randn(32, 8)
    y = torch.randn(32, 4)

    def closure():
        weight = SmallElementBug.apply(model[0].weight)
        hidden = model[2](torch.tanh(nn.functional.linear(x, weight, model[0].bias)))
        return nn.functional.mse_loss(model[3](hidden), y)

    return model, closure


@pytest.mark.parametrize("vectorize", [True, False])
def test_float64_promotion_finds_a_bug_below_the_float32_floor(vectorize):
    model, closure = small_bug_model()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = state_bits(model)
    promoted = check(closure, TorchParameters(model, float64=True, vectorize=vectorize))
    assert promoted.failing == ["0.weight"]
    tensor = promoted.tensor("0.weight")
    assert tensor.dtype == np.float64
    assert [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]] == [(1, 2)]
    assert state_bits(model) == before  # float32 parameters, buffers and grads untouched
    assert torch.get_default_dtype() == torch.float32
    assert torch.ones(1).dtype == torch.float32  # the promoting mode is gone


def test_float32_check_without_promotion_stays_within_its_floor():
    model, closure = small_bug_model()
    # 1 % of one element is below float32's resolution
    result = check(closure, TorchParameters(model, float64=False))
    assert result.passed
    assert any("round-off floor" in note or "not float64" in note for note in result.notes)


def test_float64_promotion_is_undone_after_an_error():
    model, loss = make_mlp(dtype=torch.float32)
    before = state_bits(model)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] >= 5:
            raise RuntimeError("boom")
        return loss()

    with pytest.raises(RuntimeError, match="boom"):
        check(closure, TorchParameters(model, float64=True))
    assert state_bits(model) == before and torch.get_default_dtype() == torch.float32


# -- vectorized evaluation ---------------------------------------------------------------


def spy_on_batches(monkeypatch):
    """Count vmapped calls of the adapter."""
    from nbgradcheck.adapters import torch as adapter

    calls = []
    original = adapter.TorchParameterSet.vmapped_losses
    monkeypatch.setattr(adapter, "MIN_BATCH", 1)  # batch whatever chunk the engine sends

    def counting(self, *args):
        calls.append(args[0])
        return original(self, *args)

    monkeypatch.setattr(adapter.TorchParameterSet, "vmapped_losses", counting)
    return calls


def test_vectorized_equals_looped(monkeypatch):
    calls = spy_on_batches(monkeypatch)
    model, closure = make_mlp(sizes=(6, 10, 3))
    batched = check(closure, model)
    assert calls, "the vectorized path was not taken"
    looped = check(closure, TorchParameters(model, vectorize=False))
    assert batched.passed and looped.passed
    assert list(batched.table["verdict"]) == list(looped.table["verdict"])
    for name in batched.names:
        assert np.allclose(batched.numeric[name], looped.numeric[name], rtol=1e-7, atol=1e-12)
        assert np.array_equal(batched.analytic[name], looped.analytic[name])


class MarkedIdentity(torch.autograd.Function):
    """Identity on a weight whose backward scales one element: a vmap-able custom Function."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight):
        return weight.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[3, 1] *= 1.5
        return grad


def test_vectorized_bug_found_like_the_loop(monkeypatch):
    calls = spy_on_batches(monkeypatch)
    torch.manual_seed(0)
    layer = nn.Linear(6, 10).double()
    x = torch.randn(8, 6, dtype=DOUBLE)

    def closure():
        return (
            torch.tanh(nn.functional.linear(x, MarkedIdentity.apply(layer.weight), layer.bias))
            .pow(2)
            .sum()
        )

    batched = check(closure, layer)
    assert calls
    looped = check(closure, TorchParameters(layer, vectorize=False))
    for result in (batched, looped):
        tensor = result.tensor("weight")
        assert result.failing == ["weight"]
        assert [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]] == [
            (3, 1)
        ]
    assert np.allclose(batched.numeric["weight"], looped.numeric["weight"], rtol=1e-7)


def test_vectorized_float32_model_in_float64_equals_its_loop(monkeypatch):
    calls = spy_on_batches(monkeypatch)
    model, closure = make_mlp(sizes=(6, 10, 3), dtype=torch.float32)
    before = state_bits(model)
    batched = check(closure, model)
    assert calls and batched.verdict == "correct"
    looped = check(closure, TorchParameters(model, vectorize=False))
    for name in batched.names:
        assert np.allclose(batched.numeric[name], looped.numeric[name], rtol=1e-7, atol=1e-12)
    assert state_bits(model) == before


def test_batched_losses_directly_match_the_loop():
    model, closure = make_mlp()
    parameters = torch_parameter_set(model)
    parameters.bind_loss(closure, False)
    assert parameters.can_batch
    indices = np.arange(35)  # all of 0.weight: enough for a batched call
    values = parameters.flat_values(0, indices) + np.linspace(-0.5, 0.5, 35)
    before = state_bits(model)
    batched = parameters.batched_losses(0, indices, values)
    looped = parameters.looped_losses(0, indices, values)
    assert parameters.batch_fallback is None
    np.testing.assert_allclose(batched, looped, rtol=1e-13)
    assert state_bits(model) == before


def test_linear_weights_are_replayed_from_the_tape_with_the_loop_numbers():
    model, closure = make_mlp(sizes=(6, 10, 3))
    parameters = torch_parameter_set(model)
    parameters.bind_loss(closure, False)
    indices = np.arange(60)
    values = parameters.flat_values(0, indices) + np.linspace(-1e-3, 1e-3, 60)
    batched = parameters.batched_losses(0, indices, values)
    assert isinstance(parameters.tapes[0], Tape) and parameters.batch_fallback is None
    np.testing.assert_allclose(batched, parameters.looped_losses(0, indices, values), rtol=1e-14)


def test_weight_used_twice_is_replayed_through_both_uses():
    model, loss = make_mlp(sizes=(6, 10, 3))

    def closure():  # L2 regularization uses the weight a second time
        return loss() + 0.1 * model[0].weight.pow(2).sum()

    parameters = torch_parameter_set(model)
    parameters.bind_loss(closure, False)
    indices = np.arange(60)
    values = parameters.flat_values(0, indices) + 1e-3
    batched = parameters.batched_losses(0, indices, values)
    assert isinstance(parameters.tapes[0], Tape) and parameters.batch_fallback is None
    np.testing.assert_allclose(batched, parameters.looped_losses(0, indices, values), rtol=1e-13)
    grads = [g.clone() for g in torch.autograd.grad(loss(), list(model.parameters()))]
    result = check(closure, model, grads)  # the L2 term left out of the gradient
    assert result.failing == ["0.weight"]


def test_models_vmap_cannot_run_fall_back_to_the_loop():
    class Branchy(nn.Module):  # data-dependent control flow
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 6)

        def forward(self, x):
            out = self.fc(x)
            return out if out.sum() > 0 else -out

    torch.manual_seed(0)
    model = Branchy().double()
    x = torch.randn(3, 8, dtype=DOUBLE)
    parameters = torch_parameter_set(TorchParameters(model))
    parameters.bind_loss(lambda: model(x).pow(2).sum(), False)
    indices = np.arange(48)
    values = parameters.flat_values(0, indices) + 1e-3
    looped = parameters.looped_losses(0, indices, values)
    assert np.array_equal(parameters.batched_losses(0, indices, values), looped)
    assert parameters.batch_fallback is not None and not parameters.can_batch
    assert check(lambda: model(x).pow(2).sum(), model).passed


def test_custom_function_without_vmap_rule_is_batched_from_its_recorded_forward():
    net, closure = make_net(bug="element", batchnorm=False)
    parameters = torch_parameter_set(TorchParameters(net))
    parameters.bind_loss(closure, False)
    indices = np.arange(48)
    values = parameters.flat_values(0, indices) + 1e-3
    batched = parameters.batched_losses(0, indices, values)
    assert isinstance(parameters.tapes[0], Tape) and parameters.batch_fallback is None
    np.testing.assert_allclose(batched, parameters.looped_losses(0, indices, values), rtol=1e-13)


def test_closure_holding_its_own_parameter_reference_is_caught_by_verification():
    model, _ = make_mlp()
    weight = model[0].weight  # functional_call cannot swap this reference
    x = torch.randn(4, 5, dtype=DOUBLE)

    def closure():
        return torch.tanh(nn.functional.linear(x, weight, model[0].bias)).pow(2).sum()

    parameters = torch_parameter_set(model)
    parameters.bind_loss(closure, False)
    indices = np.arange(35)
    values = parameters.flat_values(0, indices) + 1e-3
    batched = parameters.batched_losses(0, indices, values)
    assert "functional_call" in parameters.batch_fallback
    np.testing.assert_array_equal(batched, parameters.looped_losses(0, indices, values))


# -- fast mode on a larger model ---------------------------------------------------------


def test_fast_mode_localizes_a_single_wrong_element():
    model, closure = make_mlp(sizes=(40, 60, 10), batch=16)
    grads = [g.clone() for g in torch.autograd.grad(closure(), list(model.parameters()))]
    grads[0][17, 23] += 0.3 * grads[0].abs().max()
    before = state_bits(model)
    result = check(closure, model, grads, mode="fast", seed=0)
    assert result.failing == ["0.weight"]
    tensor = result.tensor("0.weight")
    assert (17, 23) in [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]]
    assert state_bits(model) == before


# -- bad input, errors and interruption --------------------------------------------------


def test_integer_tensors_are_refused_and_bfloat16_needs_float64():
    with pytest.raises(ng.ParameterError, match="int64"):
        check(lambda t: t.sum(), torch.arange(3))
    theta = torch.tensor([0.5, -1.5, 2.0], dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ng.ParameterError, match="bfloat16"):
        check(lambda t: (t**3).sum(), TorchParameters(theta, float64=False))
    before = state_bits([theta])
    result = check(lambda t: (t**3).sum(), theta)  # promoted to float64 for the check
    assert result.passed and result.tensor("theta").dtype == np.float64
    assert state_bits([theta]) == before and theta.dtype == torch.bfloat16


def test_float32_model_is_refused_where_it_cannot_be_promoted():
    model, _ = make_mlp(dtype=torch.float32)
    # outside check() there is no rng_state bracket to promote in (as in n_jobs workers)
    parameters = torch_parameter_set(model)
    with pytest.raises(ng.GradCheckError, match="float64=False"):
        parameters.element_setter(0)
    assert torch_parameter_set(TorchParameters(model, float64=False)).element_setter(0)


def test_tensor_without_requires_grad_needs_grads():
    w = torch.randn(3, dtype=DOUBLE)
    with pytest.raises(ng.GradientError, match="requires_grad"):
        check(lambda: (w**2).sum(), [w])
    assert check(lambda: (w**2).sum(), [w], [2 * w]).passed


def test_non_scalar_loss_and_loss_item_are_explained():
    w = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    with pytest.raises(ng.LossError, match="scalar"):
        check(lambda: w * 2, [w])
    with pytest.raises(ng.GradientError, match="item"):
        check(lambda: (w**2).sum().item(), [w])


def test_wrong_gradient_structures_are_explained():
    model, closure = make_mlp()
    grads = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ng.GradientError, match="4 parameters"):
        check(closure, model, grads[:3])
    with pytest.raises(ng.GradientError, match=r"no gradient for 2\.bias"):
        check(closure, model, {"0.weight": grads[0], "0.bias": grads[1], "2.weight": grads[2]})
    with pytest.raises(ng.GradientError, match="transposed"):
        check(closure, model, [grads[0].t(), *grads[1:]])
    with pytest.raises(ng.GradientError, match="dict keyed by parameter name"):
        check(closure, model, grads[0].numpy())


def test_loss_changing_parameters_is_refused_and_undone():
    model, loss = make_mlp()
    before = state_bits(model)

    def closure():
        with torch.no_grad():
            model[0].bias.add_(1.0)
        return loss()

    with pytest.raises(ng.ParametersModifiedError, match=r"0\.bias"):
        check(closure, model)
    assert state_bits(model) == before


@pytest.mark.parametrize("vectorize", [True, False])
def test_error_mid_check_restores_every_parameter(vectorize):
    model, loss = make_mlp()
    before = state_bits(model)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] >= 5:  # after the first evaluations and the backward pass
            raise RuntimeError("boom")
        return loss()

    with pytest.raises(RuntimeError, match="boom"):
        check(closure, TorchParameters(model, vectorize=vectorize))
    assert state_bits(model) == before


def test_keyboard_interrupt_gives_partial_result_and_unchanged_model():
    model, loss = make_mlp()
    before = state_bits(model)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return loss()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = check(closure, TorchParameters(model, vectorize=False))
    assert not result.complete
    assert state_bits(model) == before


def test_complex_method_is_refused_for_tensors():
    model, closure = make_mlp()
    with pytest.raises(ng.GradCheckError):
        check(closure, model, method="complex")


def test_non_finite_parameter_is_refused():
    w = torch.tensor([1.0, float("nan")], dtype=DOUBLE, requires_grad=True)
    with pytest.raises(ng.ParameterError, match="nan"):
        check(lambda: w.sum(), [w])


# -- views and devices -------------------------------------------------------------------


def test_tables_and_heatmaps_work_on_torch_results():
    pytest.importorskip("matplotlib")
    net, closure = make_net(bug="element")
    result = check(closure, net)
    assert result.table.loc["fc1.weight", "verdict"] == "wrong"
    assert result.numeric["fc1.weight"].shape == (8, 6)
    html = result._repr_mimebundle_()["text/html"]
    assert "fc1.weight" in html


def test_gradcheck_magic_with_a_module():
    pytest.importorskip("IPython")
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython() or get_ipython()
    model, closure = make_mlp()
    ip.run_line_magic("load_ext", "nbgradcheck.notebook.magics")
    if framework_of(model) != "torch":
        model = TorchParameters(model)
    ip.push({"model": model, "closure": closure})
    try:
        result = ip.run_line_magic("gradcheck", "--wrt model -q closure()")
    finally:
        ip.run_line_magic("unload_ext", "nbgradcheck.notebook.magics")
    assert result.passed and result.names[0] == "0.weight"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_module_checked_and_restored():
    model, _ = make_mlp()
    model = model.cuda()
    x = torch.randn(8, 5, dtype=DOUBLE, device="cuda")
    closure = lambda: model(x).pow(2).mean()  # noqa: E731
    before = state_bits(model)
    assert check(closure, model).passed
    grads = [g.clone() for g in torch.autograd.grad(closure(), list(model.parameters()))]
    grads[2][1, 3] += 0.1
    result = check(closure, model, grads)
    assert result.failing == ["2.weight"]
    assert state_bits(model) == before
