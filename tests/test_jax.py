"""The JAX adapter: pytrees, custom_vjp rules, float64 via x64, vectorized evaluation,
bad input and untouched parameters."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nbgradcheck as ng
from nbgradcheck.adapters.jax import JaxParameters, jax_parameter_set
from nbgradcheck.adapters.registry import framework_of


def check(loss, params, grads=None, **options):
    """ng.check with grads from jax.grad, full mode and no bar.

    A nested pytree is wrapped in JaxParameters when the dispatch does not yet look
    below the first level (see test_nested_pytree_dispatch).
    """
    if not isinstance(params, JaxParameters) and framework_of(params) != "jax":
        params = JaxParameters(params)
    options.setdefault("mode", "full")
    options.setdefault("progress", False)
    return ng.check(loss, params, grads, **options)


def tree_bits(tree):
    return [
        (np.asarray(leaf).dtype.str, np.asarray(leaf).tobytes())
        for leaf in jax.tree_util.tree_leaves(tree)
    ]


@jax.custom_vjp
def scaled_tanh(x, w):
    """tanh(x @ w) with a hand-written VJP; ``BUG`` plants mistakes in it."""
    return jnp.tanh(x @ w)


def scaled_tanh_fwd(x, w):
    y = jnp.tanh(x @ w)
    return y, (x, w, y)


BUG = {"kind": None}


def scaled_tanh_bwd(residuals, g):
    x, w, y = residuals
    dz = g * (1 - y**2)
    dw = x.T @ dz
    if BUG["kind"] == "element":
        dw = dw.at[2, 1].multiply(1.5)
    elif BUG["kind"] == "missing_derivative":
        dw = x.T @ g  # forgot tanh'
    return dz @ w.T, dw


scaled_tanh.defvjp(scaled_tanh_fwd, scaled_tanh_bwd)


@pytest.fixture
def bug():
    yield BUG
    BUG["kind"] = None


def network(dtype=np.float32, seed=0):
    """A nested pytree: {'hidden': {'w', 'b'}, 'out': [w, b]} and a loss over it.

    Arrays are drawn with NumPy (jax.random would compile its kernels first).
    """
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return jnp.asarray((scale * rng.standard_normal(shape)).astype(dtype))

    params = {
        "hidden": {"w": normal(4, 6, scale=0.5), "b": normal(6, scale=0.1)},
        "out": [normal(6, 3, scale=0.5), normal(3, scale=0.1)],
    }
    x = normal(10, 4)
    labels = jnp.arange(10) % 3

    def loss(p):
        h = scaled_tanh(x, p["hidden"]["w"]) + p["hidden"]["b"]
        logits = h @ p["out"][0] + p["out"][1]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(10), labels])

    return params, loss


# -- pytrees and custom_vjp --------------------------------------------------------------


def test_nested_pytree_dispatch():
    params, loss = network()
    assert framework_of(params) == "jax"
    # no JaxParameters wrapper: the registry itself finds the leaves below the first level
    result = ng.check(loss, params, mode="full", progress=False)
    assert result.passed
    assert result.names == ["hidden.b", "hidden.w", "out.0", "out.1"]


def test_correct_pytree_passes_with_key_path_names_and_is_untouched():
    params, loss = network()
    before = tree_bits(params)
    result = check(loss, params)
    assert result.passed
    assert result.names == ["hidden.b", "hidden.w", "out.0", "out.1"]
    assert result.n_checked == 6 + 24 + 18 + 3
    assert tree_bits(params) == before


def test_custom_vjp_element_bug_found_on_exactly_its_element(bug):
    bug["kind"] = "element"
    params, loss = network()
    result = check(loss, params)  # float32 leaves, checked in float64
    assert result.failing == ["hidden.w"]
    tensor = result.tensor("hidden.w")
    assert [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]] == [(2, 1)]


def test_custom_vjp_missing_derivative_fails_in_float32(bug):
    bug["kind"] = "missing_derivative"
    params, loss = network()
    result = check(loss, JaxParameters(params, float64=False))
    assert result.failing == ["hidden.w"]
    assert result.tensor("hidden.w").dtype == np.float32


def test_flat_dict_single_array_and_tuple_return():
    w = jnp.array([0.3, -1.2, 2.0])
    result = check(lambda t: (jnp.sum(jnp.sin(t)), {"aux": 1}), w)
    assert result.passed and result.names == ["theta"]
    result = check(
        lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(p["b"]),
        {"a": jnp.array([1.0, 2.0]), "b": jnp.ones(2)},
    )
    assert result.passed and result.names == ["a", "b"]


def test_user_given_gradients_as_pytree_dict_or_list():
    params, loss = network()
    grads = jax.grad(loss)(params)
    assert check(loss, params, grads).passed
    by_name = {
        "hidden.w": grads["hidden"]["w"],
        "dhidden.b": grads["hidden"]["b"],
        "out.0": grads["out"][0],
        "out.1": grads["out"][1],
    }
    assert check(loss, params, by_name).passed
    wrong = jax.tree_util.tree_map(lambda g: g, grads)
    wrong["out"][1] = -wrong["out"][1]
    assert check(loss, params, wrong).failing == ["out.1"]


def test_wrong_gradient_structure_is_explained():
    params, loss = network()
    grads = jax.grad(loss)(params)
    with pytest.raises(ng.GradientError, match="structure"):
        check(loss, params, {"hidden": grads["hidden"]})
    with pytest.raises(ng.GradientError, match="shape"):
        check(loss, params, {**grads, "out": [grads["out"][0].T, grads["out"][1]]})


# -- float32 and float64 -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("float64", [True, False])
def test_float32_correct_passes_and_planted_bug_fails(seed, float64, bug):
    params, loss = network(seed=seed)
    assert check(loss, JaxParameters(params, float64=float64)).passed
    bug["kind"] = "element"
    result = check(loss, JaxParameters(params, float64=float64))
    assert result.failing == ["hidden.w"]


def test_float32_leaves_are_checked_in_float64_and_x64_restored():
    params, loss = network()
    x64_before = jax.config.jax_enable_x64
    result = check(loss, params)
    assert result.verdict == "correct" and result.difference < 1e-7
    assert all(result.tensor(name).dtype == np.float64 for name in result.names)
    assert jax.config.jax_enable_x64 == x64_before
    assert tree_bits(params) == tree_bits(network()[0])


def test_float64_numpy_leaves_are_checked_with_x64_on_and_left_untouched():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    x = rng.normal(size=(5, 3))
    before = tree_bits(params)

    def loss(p):
        return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    result = check(loss, JaxParameters(params))
    assert result.verdict == "correct"
    assert not jax.config.jax_enable_x64
    assert tree_bits(params) == before


# -- vectorized evaluation ---------------------------------------------------------------


def test_vectorized_equals_looped(monkeypatch):
    from nbgradcheck.adapters import jax as adapter

    monkeypatch.setattr(adapter, "MIN_BATCH", 1)
    calls = []
    original = adapter.JaxParameterSet.vmapped_losses
    monkeypatch.setattr(
        adapter.JaxParameterSet,
        "vmapped_losses",
        lambda self, *a: calls.append(a[0]) or original(self, *a),
    )
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "b": jnp.zeros(5)}
    x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)

    def loss(p):
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    batched = check(loss, params)
    assert calls
    looped = check(loss, JaxParameters(params, vectorize=False))
    assert list(batched.table["verdict"]) == list(looped.table["verdict"])
    for name in batched.names:
        np.testing.assert_allclose(
            batched.numeric[name], looped.numeric[name], rtol=1e-7, atol=1e-12
        )


def test_batched_losses_directly_match_the_loop():
    params, loss = network()
    parameters = jax_parameter_set(JaxParameters(params, float64=False))
    parameters.bind_loss(loss, True)
    indices = np.arange(24)
    values = parameters.flat_values(1, indices) + np.linspace(-0.3, 0.3, 24, dtype=np.float32)
    batched = parameters.batched_losses(1, indices, values)
    assert parameters.batch_fallback is None
    np.testing.assert_allclose(batched, parameters.looped_losses(1, indices, values), rtol=1e-5)
    assert parameters.arrays[1].tobytes() == np.asarray(params["hidden"]["w"]).tobytes()


def test_loss_vmap_cannot_trace_falls_back_to_the_loop():
    def loss(p):
        total = jnp.sum(p["w"] ** 2)
        return total if float(total) > 0 else -total  # Python control flow on a value

    params = {"w": jnp.linspace(-1.0, 1.0, 40)}
    parameters = jax_parameter_set(JaxParameters(params, float64=False))
    parameters.bind_loss(loss, True)
    indices = np.arange(40)
    values = parameters.flat_values(0, indices) + np.float32(1e-2)
    looped = parameters.looped_losses(0, indices, values)
    np.testing.assert_array_equal(parameters.batched_losses(0, indices, values), looped)
    assert parameters.batch_fallback is not None and not parameters.can_batch


# -- compiled programs -------------------------------------------------------------------


def mlp(seed=0, dtypes=(np.float64,) * 4):
    """A two-layer tanh MLP on float64 NumPy data; NumPy leaves w1, b1, w2, b2 of
    ``dtypes`` (b2, 4 elements, is too small to batch)."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (6, 20), "b1": (20,), "w2": (20, 4), "b2": (4,)}
    params = {
        name: (0.4 * rng.standard_normal(shape)).astype(dtype)
        for (name, shape), dtype in zip(shapes.items(), dtypes)
    }
    x = rng.standard_normal((5, 6))
    labels = np.arange(5) % 4

    def loss(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return params, loss


@pytest.fixture
def compiled():
    """The adapter's cache of compiled functions, empty for this test."""
    from collections import OrderedDict

    from nbgradcheck.adapters import jax as adapter

    saved = adapter._compiled
    adapter._compiled = OrderedDict()
    yield adapter._compiled
    adapter._compiled = saved


def batched_programs(compiled):
    """Keys (program text, leaf positions, batch size) of the batched programs."""
    return [key for key in compiled if key[1]]


def test_each_batched_leaf_is_in_one_program_and_a_second_check_compiles_nothing(compiled):
    params, loss = mlp(seed=11)
    result = check(loss, params)
    assert result.passed
    programs = batched_programs(compiled)
    assert sorted(p for key in programs for p in key[1]) == [0, 2, 3]  # b1, w1, w2
    again = check(loss, params)
    assert batched_programs(compiled) == programs
    for name in result.names:
        np.testing.assert_array_equal(again.numeric[name], result.numeric[name])


def test_a_program_holds_leaves_of_one_dtype_and_equals_the_loop(compiled):
    dtypes = (np.float32, np.float64, np.float64, np.float64)  # w1 float32
    params, loss = mlp(seed=12, dtypes=dtypes)
    batched = check(loss, JaxParameters(params, float64=False))
    assert batched.passed
    programs = [key[1] for key in batched_programs(compiled)]
    assert sorted(p for positions in programs for p in positions) == [0, 2, 3]
    assert (2,) in programs  # w1 alone: the other leaves are float64
    looped = check(loss, JaxParameters(params, float64=False, vectorize=False))
    for name in batched.names:
        assert batched.tensor(name).dtype == params[name].dtype
        np.testing.assert_allclose(batched.numeric[name], looped.numeric[name], rtol=1e-3)


def test_batch_group_pads_small_leaves_only_within_budget():
    from nbgradcheck.adapters.jax import batch_group

    class NoArrays:  # a traced program whose arrays do not bound the batch size
        jaxpr = type("Jaxpr", (), {"eqns": []})

    mlp_50k = {0: 512, 1: 61440, 2: 128, 3: 32768, 5: 1280}  # copies per leaf
    assert batch_group(NoArrays, mlp_50k, 0, 512) == ((0, 1, 2, 3, 5), 2048)
    mlp_5k = {0: 128, 1: 5120, 2: 64, 3: 4096, 5: 640}
    # padding b1 (128 copies) to 2048 would cost more than 1/8 of the large leaves'
    # copies: the small leaves get a batch size of their own, the large ones a later one
    assert batch_group(NoArrays, mlp_5k, 0, 128) == ((0, 2, 5), 128)
    assert batch_group(NoArrays, {1: 5120, 3: 4096}, 1, 2048) == ((1, 3), 2048)


def test_heap_freezing_leaves_the_collector_as_it_was():
    import gc

    params, loss = mlp(seed=13)
    assert check(loss, params).passed
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.freeze()  # frozen by someone else: left frozen (the count falls as objects die)
    try:
        assert check(loss, mlp(seed=14)[0]).passed
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        assert check(loss, mlp(seed=15)[0]).passed
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_compile_options_this_xla_does_not_know_are_dropped():
    from nbgradcheck.adapters.jax_carry import COMPILER_OPTIONS, compile_lowered

    class Lowered:
        def __init__(self, error):
            self.error, self.seen = error, []

        def compile(self, compiler_options):
            self.seen.append(dict(compiler_options))
            unknown = [n for n in compiler_options if n == "xla_cpu_use_fusion_emitters"]
            if unknown:
                raise RuntimeError(f"{self.error}: '{unknown[0]}'")
            return "executable"

    lowered = Lowered("INVALID_ARGUMENT: No such compile option")
    assert compile_lowered(lowered) == "executable"
    assert lowered.seen[0] == COMPILER_OPTIONS
    assert "xla_cpu_use_fusion_emitters" not in lowered.seen[-1]
    with pytest.raises(RuntimeError, match="out of memory"):
        compile_lowered(Lowered("out of memory"))


@pytest.mark.parametrize("optimize_after", [0.0, float("inf")])
def test_a_long_evaluation_is_compiled_again_with_optimizations(
    monkeypatch, compiled, optimize_after
):
    from nbgradcheck.adapters import jax_carry

    monkeypatch.setattr(jax_carry, "OPTIMIZE_AFTER", optimize_after)
    params, loss = mlp(seed=16)
    batched = check(loss, params)
    programs = [compiled[key] for key in batched_programs(compiled)]
    assert programs and all(f.optimized == (optimize_after == 0.0) for f in programs)
    looped = check(loss, JaxParameters(params, vectorize=False))
    for name in batched.names:  # equal to the round-off of J over the step
        np.testing.assert_allclose(
            batched.numeric[name], looped.numeric[name], rtol=1e-7, atol=1e-9
        )


# -- bad input ---------------------------------------------------------------------------


def test_closure_without_argument_is_refused():
    params = {"w": jnp.ones(3)}
    with pytest.raises(ng.LossError, match="argument"):
        check(lambda: jnp.sum(params["w"] ** 2), params)


def test_integer_and_non_array_leaves_are_refused():
    with pytest.raises(ng.ParameterError, match="int32"):
        check(lambda p: jnp.sum(p["w"]), {"w": jnp.arange(3)})
    with pytest.raises(ng.ParameterError, match="not an array"):
        check(lambda p: p["s"] * 2.0, JaxParameters({"s": 2.0}))


def test_non_scalar_loss_is_explained():
    with pytest.raises(ng.LossError, match="scalar"):
        check(lambda p: p["w"] * 2, {"w": jnp.ones(3)})


def test_error_and_interrupt_mid_check_leave_numpy_leaves_untouched():
    params = {"w": np.linspace(-1.0, 1.0, 12)}
    before = tree_bits(params)
    calls = {"n": 0}

    def loss(p):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        if calls["n"] == 30:
            raise RuntimeError("boom")
        return jnp.sum(jnp.sin(p["w"]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = check(loss, JaxParameters(params, vectorize=False))
    assert not result.complete and tree_bits(params) == before
    calls["n"] = 10
    with pytest.raises(RuntimeError, match="boom"):
        check(loss, JaxParameters(params, vectorize=False))
    assert tree_bits(params) == before


def test_loss_mutating_a_numpy_leaf_is_refused_and_undone():
    params = {"w": np.ones(3)}

    def loss(p):
        params["w"][0] += 1.0  # the user's own array, through a closure
        return jnp.sum(p["w"] ** 2)

    with pytest.raises(ng.ParametersModifiedError, match="w"):
        check(loss, JaxParameters(params))
    assert params["w"].tolist() == [1.0, 1.0, 1.0]


def test_fast_mode_localizes_a_single_wrong_element():
    rng = np.random.default_rng(1)
    params = {
        "w": jnp.asarray(0.2 * rng.standard_normal((30, 40)), jnp.float32),
        "b": jnp.zeros(40),
    }
    x = jnp.asarray(rng.standard_normal((16, 30)), jnp.float32)

    def loss(p):
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    grads = jax.grad(loss)(params)
    grads["w"] = grads["w"].at[7, 11].add(0.3 * jnp.abs(grads["w"]).max())
    result = check(loss, params, grads, mode="fast", seed=0)
    assert result.failing == ["w"]
    tensor = result.tensor("w")
    assert (7, 11) in [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]]
