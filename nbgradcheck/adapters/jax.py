"""JAX adapter: check ``loss(params)`` for ``params`` any pytree of arrays.

JAX arrays are immutable, so the adapter keeps a NumPy working copy of every leaf,
perturbs that copy and hands the loss a rebuilt pytree: unchanged leaves are the user's
own arrays (cached), and only the perturbed leaf is converted again, so an evaluation
costs one leaf transfer. The user's pytree is never modified.

Analytic gradients come from ``jax.grad`` of the loss over the pytree, which is what
checks a ``jax.custom_vjp`` (or ``custom_jvp``) rule; or from the user's ``grads`` (the
same pytree structure, a dict keyed by leaf name, or a list in leaf order).

Leaf names are key paths joined by dots (``layer1.w``, ``0.b``); a bare array is
``theta``. Many perturbations are evaluated in one call of a compiled program (one for
the leaves of a model) that interprets the traced loss for a batch of copies, carrying
each one-element change through the layers (:mod:`nbgradcheck.adapters.jax_carry`);
tracing and compiling run with the existing heap frozen (:func:`heap_frozen`), since
they set off full collections of Python's heap otherwise; a loss JAX cannot trace
(Python control flow on values, ``float(x)``) is evaluated one element at a time
instead.

float64: low-precision leaves are checked in float64 by default (the working copies are
float64, and JAX's type promotion carries the loss to float64), with ``jax_enable_x64``
switched on for the duration of the check and restored afterwards; in float32 a wrong
element is visible only above the round-off floor. ``JaxParameters(params,
float64=False)`` checks the leaves in their own dtype.
"""

from __future__ import annotations

import gc
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.jax_carry import batched_losses_function, compile_lowered
from nbgradcheck.adapters.numpy import (
    SINGLE_ARRAY_NAME,
    format_index,
    gradient_key,
    validated_gradient,
)
from nbgradcheck.errors import GradientError, LossError, ParameterError, ParametersModifiedError

# Fewer elements than this are evaluated by the loop: a batched call has a fixed cost
# (tracing, compiling, verification) that only many elements repay.
MIN_BATCH = 32
# One batched call holds about this many bytes of perturbed values: the largest array of
# the loss, counted whole for every copy (a bound: XLA fuses most of them away).
BATCH_MEMORY_BYTES = 64 * 2**20
MAX_BATCH = 2048
# Leaves too small to fill a batch still join the compiled function of larger ones while
# their padding adds at most this share to the group's evaluations (one program to
# compile instead of one per batch size).
PADDING_SHARE = 1 / 8
# Batched and looped J may differ by rounding: this many unit round-offs of |J|.
VERIFY_ELEMENTS = 3
VERIFY_ROUNDOFF = 64.0
# Compiled functions kept across checks, by (traced program, leaves, batch size): a second
# check of the same model compiles nothing.
COMPILED_FUNCTIONS = 32
_compiled: OrderedDict[tuple[str, tuple[int, ...], int], Callable] = OrderedDict()
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class JaxParameters(Mapping):
    """A pytree of parameters with options for the check.

    ``float64=True`` (the default) checks float32 and float16 leaves in float64
    (``jax_enable_x64`` on for the check, restored afterwards): the loss receives float64
    leaves, and JAX's type promotion carries the whole computation to float64.
    ``float64=False`` checks them in their own dtype, with round-off-aware verdicts.
    ``vectorize=False`` forces the element-by-element loop.
    """

    def __init__(self, params: Any, *, float64: bool = True, vectorize: bool = True) -> None:
        self.params = params
        self.float64 = float64
        self.vectorize = vectorize
        self.paths, self.leaves, self.treedef = flatten(params)
        self.names = [leaf_name(path) for path in self.paths] or []

    def __getitem__(self, name: str) -> Any:
        """The leaf as a JAX array (NumPy leaves converted: the dispatch sees JAX)."""
        leaf = self.leaves[self.names.index(name)]
        return leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def jax_parameter_set(params: Any) -> JaxParameterSet:
    """The engine's view of a pytree of JAX (or NumPy) arrays."""
    options = params if isinstance(params, JaxParameters) else JaxParameters(params)
    return JaxParameterSet(options)


def flatten(params: Any) -> tuple[list[Any], list[Any], Any]:
    """(key paths, leaves, treedef) of the pytree, validated."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not path_leaves:
        raise ParameterError("params is an empty pytree: there is nothing to check")
    paths = [path for path, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    for path, leaf in zip(paths, leaves):
        validate_leaf(leaf_name(path), leaf)
    return paths, leaves, treedef


def leaf_name(path: Any) -> str:
    """``layer1.w`` for the key path ('layer1', 'w'); ``theta`` for the root."""
    return ".".join(key_text(key) for key in path) or SINGLE_ARRAY_NAME


def key_text(key: Any) -> str:
    """One entry of a key path: a dict key, a sequence index or an attribute name."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def enable_x64() -> Any:
    """A context manager switching ``jax_enable_x64`` on (restored on exit)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64(True)


def validate_leaf(name: str, leaf: Any) -> None:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        raise ParameterError(
            f"leaf {name} is a {type(leaf).__name__}, not an array: make it one "
            f"(jnp.asarray) or keep it out of params (close over it in the loss)"
        )
    if np.dtype(dtype) not in [np.dtype(d) for d in FLOAT_DTYPES]:
        raise ParameterError(
            f"leaf {name} has dtype {dtype}: only float16/32/64 leaves can hold a small "
            f"perturbation; keep integer and bfloat16 leaves out of params (or cast them)"
        )
    array = np.asarray(leaf)
    if not np.all(np.isfinite(array)):
        where = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
        raise ParameterError(
            f"leaf {name} contains {array[where]} at {format_index(where)}: "
            f"a gradient check needs finite parameters"
        )


def first_of(value: Any) -> Any:
    """The loss from a return value that may be a ``(loss, ...)`` tuple."""
    if type(value) is tuple:
        if not value:
            raise LossError("the loss returned an empty tuple; return the loss (first)")
        return value[0]
    return value


class JaxParameterSet(ParameterAdapter):
    """The engine's interface (see :class:`nbgradcheck.adapters.numpy.ParameterSet`) for JAX."""

    fixed_argument = False  # a new pytree is built for every evaluation

    def __init__(self, options: JaxParameters) -> None:
        self.options = options
        self.names = options.names
        self.original = options.params
        self.treedef = options.treedef
        self.leaves = options.leaves
        promote = np.float64 if options.float64 else None
        self.arrays = [
            np.array(leaf, dtype=promote or np.asarray(leaf).dtype, copy=True)
            for leaf in self.leaves
        ]
        self.base = [a.copy() for a in self.arrays]  # the unperturbed values
        self.current: list[Any] = [None] * len(self.arrays)  # leaves handed to the loss
        self.loss: Callable[..., Any] | None = None
        self.pass_argument = True
        self.seed: int | None = None
        self.batch_fallback: str | None = None
        self.program: Any = None  # the loss traced to a closed jaxpr over the leaves
        self.program_text = ""  # its text, the key of its compiled functions
        # per leaf: (its branch, the compiled function, the batch size), fixed at the first
        # batched call for all the leaves that can be batched
        self.batched: dict[int, tuple[int, Callable, int]] = {}
        self.verified: set[int] = set()

    # -- description -------------------------------------------------------------------
    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.arrays]

    @property
    def dtypes(self) -> list[np.dtype]:
        return [a.dtype for a in self.arrays]

    @property
    def notes(self) -> list[str]:
        """What the result should say about how the check was made."""
        promoted = [
            n
            for n, leaf, a in zip(self.names, self.leaves, self.arrays)
            if np.asarray(leaf).dtype != a.dtype
        ]
        if not promoted:
            return []
        return [
            f"checked in float64: {', '.join(promoted[:3])}"
            f"{', ...' if len(promoted) > 3 else ''} promoted for the check "
            f"(JaxParameters(params, float64=False) checks them in their own dtype)"
        ]

    def needs_x64(self) -> bool:
        return any(a.dtype == np.float64 for a in self.arrays)

    # -- the pytree the loss receives ------------------------------------------------------
    def argument(self) -> Any:
        """The pytree at the current (possibly perturbed) values."""
        return self.treedef.unflatten(self.current_leaves())

    def current_leaves(self) -> list[Any]:
        for position, leaf in enumerate(self.current):
            if leaf is None:
                self.current[position] = self.leaf_at(position)
        return self.current

    def leaf_at(self, position: int) -> Any:
        """The user's own leaf when unperturbed, else a JAX array of the working copy."""
        array, original = self.arrays[position], self.leaves[position]
        unchanged = array.tobytes() == self.base[position].tobytes()
        if unchanged and isinstance(original, jax.Array) and original.dtype == array.dtype:
            return original
        return jnp.array(array, copy=True)

    def invalidate(self, position: int) -> None:
        self.current[position] = None

    # -- reading and perturbing elements ---------------------------------------------------
    def flat_values(self, position: int, indices: np.ndarray) -> np.ndarray:
        return self.arrays[position].reshape(-1)[indices].copy()

    def element_setter(self, position: int) -> Callable[[int, Any], None]:
        flat = self.arrays[position].reshape(-1)

        def set_element(flat_index: int, value: Any) -> None:
            flat[flat_index] = value
            self.current[position] = None

        return set_element

    def group_setter(self, position: int) -> Callable[[np.ndarray, np.ndarray], None]:
        flat = self.arrays[position].reshape(-1)

        def set_group(indices: np.ndarray, values: np.ndarray) -> None:
            flat[indices] = values
            self.current[position] = None

        return set_group

    # -- randomness and global state -------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Re-seed NumPy and Python (JAX's own randomness uses explicit keys)."""
        self.seed = seed
        np.random.seed(seed)
        random.seed(seed)

    def rng_fingerprint(self) -> tuple:
        _, key, position, has_gauss, gauss = np.random.get_state()
        return position, int(key[0]), int(key[-1]), has_gauss, gauss, hash(random.getstate())

    def rng_state(self) -> Callable[[], None]:
        """Save the RNG states and switch float64 on if needed; returns the undo function.

        The engine calls this once before the first evaluation and the returned function
        once at the end, also on errors, so it brackets the whole check.
        """
        numpy_state, python_state = np.random.get_state(), random.getstate()
        x64 = enable_x64() if self.needs_x64() else None
        if x64 is not None:
            x64.__enter__()

        def restore() -> None:
            if x64 is not None:
                x64.__exit__(None, None, None)
            self.current = [None] * len(self.arrays)  # built under the old setting
            np.random.set_state(numpy_state)
            random.setstate(python_state)

        return restore

    # -- exact restore ---------------------------------------------------------------------
    def snapshot(self) -> list[np.ndarray]:
        """The user's NumPy leaves (the only mutable ones) and the working copies."""
        return [a.copy() for a in self.arrays]

    def user_numpy_leaves(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        return [
            (name, leaf, base)
            for name, leaf, base in zip(self.names, self.leaves, self.base)
            if isinstance(leaf, np.ndarray)
        ]

    def modified_names(self, snapshot: list[np.ndarray]) -> list[str]:
        return [
            name
            for name, leaf, base in self.user_numpy_leaves()
            if leaf.astype(base.dtype).tobytes() != base.tobytes()
        ]

    def restore(self, snapshot: list[np.ndarray]) -> None:
        for position, saved in enumerate(snapshot):
            np.copyto(self.arrays[position], saved)
            self.current[position] = None

    def ensure_unmodified(self, snapshot: list[np.ndarray], culprit: str) -> None:
        """JAX leaves cannot change; a NumPy leaf in the pytree can."""
        changed = self.modified_names(snapshot)
        if changed:
            for name, leaf, base in self.user_numpy_leaves():
                if name in changed:
                    np.copyto(leaf, base.astype(leaf.dtype))
            raise ParametersModifiedError(
                f"{culprit} changed the NumPy leaf {', '.join(changed)} in place. It was "
                f"restored; make {culprit} leave its parameters unchanged."
            )
        self.restore(snapshot)

    # -- gradients -------------------------------------------------------------------------
    def match_gradients(self, grads: Any) -> tuple[list[np.ndarray], list[str]]:
        """Align ``grads`` (same pytree, dict by leaf name, or list in leaf order)."""
        raw, ignored = self.gradient_leaves(grads)
        matched = [
            validated_gradient(name, g, array)
            for name, g, array in zip(self.names, raw, self.arrays)
        ]
        return matched, ignored

    def gradient_leaves(self, grads: Any) -> tuple[list[Any], list[str]]:
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        if treedef == self.treedef:
            return leaves, []
        if isinstance(grads, Mapping) and all(gradient_key(n, grads) for n in self.names):
            keys = [gradient_key(n, grads) for n in self.names]
            return [grads[k] for k in keys], [str(k) for k in grads if k not in keys]
        if (
            isinstance(grads, (list, tuple))
            and len(grads) == len(self.names)
            and not isinstance(self.original, (list, tuple))
        ):
            return list(grads), []
        raise GradientError(
            f"grads has the structure {treedef} but params has {self.treedef}: give "
            f"gradients as the same pytree (as jax.grad returns them), a dict keyed by "
            f"leaf name ({', '.join(self.names[:3])}{', ...' if len(self.names) > 3 else ''})"
            f" or a list in leaf order"
        )

    def autograd_gradients(self, loss: Callable[..., Any], pass_argument: bool) -> Any:
        """``jax.grad`` of the loss over the pytree (this uses custom_vjp rules), traced
        at every check and run as one compiled program, kept for the next check that
        traces to the same program (op by op, a new model's first backward pass would
        compile every primitive on its own: ten times longer)."""
        self.bind_loss(loss, pass_argument)
        gradient = jax.grad(lambda tree: first_of(loss(tree)))
        tree = self.argument()
        with heap_frozen():
            try:
                traced = jax.make_jaxpr(gradient)(tree)
            except Exception:  # not traceable: op by op below, which raises what matters
                traced = None
            if traced is not None:
                leaves = jax.tree_util.tree_leaves(tree)
                program = compiled_program(traced, leaves)
        if traced is not None:
            return self.treedef.unflatten(program(list(traced.consts), leaves))
        try:
            return gradient(tree)
        except (jax.errors.ConcretizationTypeError, TypeError) as error:
            raise GradientError(
                f"jax.grad could not differentiate the loss ({type(error).__name__}: "
                f"{str(error).splitlines()[0]}): it must compute the loss with jax.numpy "
                f"from its argument and return it as a JAX scalar; or pass grads="
            ) from error

    # -- vectorized evaluation -------------------------------------------------------------
    def bind_loss(self, loss: Callable[..., Any], pass_argument: bool) -> None:
        """Remember the loss; it must take the pytree (a closure never sees a change)."""
        if not pass_argument:
            raise LossError(
                "a JAX loss must take the parameters as its argument, loss(params): JAX "
                "arrays are immutable, so a loss that closes over them never sees the "
                "perturbed values"
            )
        self.loss, self.pass_argument = loss, pass_argument

    @property
    def can_batch(self) -> bool:
        return self.options.vectorize and self.loss is not None and self.batch_fallback is None

    def batched_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """J with each listed element set to its value in turn; parameters unchanged."""
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values, dtype=self.arrays[position].dtype)
        if self.batch_fallback is None and indices.size >= MIN_BATCH:
            try:
                return self.vmapped_losses(position, indices, values)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # vmap cannot trace this loss: use the loop
                self.batch_fallback = f"{type(error).__name__}: {error}"
        return self.looped_losses(position, indices, values)

    def vmapped_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """J for each (index, value) through one compiled function for all the leaves
        (see :mod:`nbgradcheck.adapters.jax_carry`): its batch size is fixed at the first
        call (bounded by memory), chunks are padded to it, so XLA compiles once."""
        if position not in self.batched:
            self.compile_batched(position, indices.size)
        slot, function, count = self.batched[position]
        leaves = list(self.current_leaves())
        consts = list(self.traced().consts)
        dtype = self.arrays[position].dtype
        out = []
        for start in range(0, indices.size, count):
            part = slice(start, start + count)
            taken = indices[part].size
            index = np.full(count, indices[start], dtype=np.int64)
            value = np.full(count, values[start], dtype=dtype)
            index[:taken], value[:taken] = indices[part], values[part]
            losses = function(slot, consts, leaves, index, value)
            out.append(np.asarray(losses, dtype=np.float64)[:taken])
        result = np.concatenate(out)
        if position not in self.verified:
            self.verify_batched(position, indices, values, result)
        return result

    def compile_batched(self, position: int, first_call: int) -> None:
        """One compiled function for this leaf and the other leaves of its dtype that the
        check will batch (see :func:`batch_group`): a program compiled at once costs less
        than one per leaf."""
        dtype = self.arrays[position].dtype
        copies = {
            p: 2 * array.size
            for p, array in enumerate(self.arrays)
            if p == position
            or (p not in self.batched and array.dtype == dtype and 2 * array.size >= MIN_BATCH)
        }
        with heap_frozen():
            program = self.traced()
            positions, count = batch_group(program, copies, position, first_call)
            key = (self.program_text, positions, count)
            if key not in _compiled:
                leaves = self.current_leaves()
                copies_of_group = sum(copies[p] for p in positions)
                function = batched_losses_function(
                    program, positions, count, leaves, dtype, copies_of_group
                )
                keep(key, function)
        function = reuse(key)
        for slot, p in enumerate(positions):
            self.batched[p] = (slot, function, count)

    def traced(self) -> Any:
        """The loss as a closed jaxpr over the flat leaves (traced once per check)."""
        if self.program is None:
            loss, treedef = self.loss, self.treedef

            def flat_loss(leaves: list) -> Any:
                return jnp.reshape(first_of(loss(treedef.unflatten(leaves))), ())

            self.program = jax.make_jaxpr(flat_loss)(list(self.current_leaves()))
            self.program_text = str(self.program.jaxpr)
        return self.program

    def verify_batched(
        self, position: int, indices: np.ndarray, values: np.ndarray, losses: np.ndarray
    ) -> None:
        """Compare a few batched values with the loop; raise when they disagree."""
        picks = np.unique(np.linspace(0, indices.size - 1, VERIFY_ELEMENTS).astype(int))
        looped = self.looped_losses(position, indices[picks], values[picks])
        roundoff = VERIFY_ROUNDOFF * float(np.finfo(self.arrays[position].dtype).eps)
        scale = np.maximum(np.abs(looped), 1e-30)
        if not np.all(np.abs(losses[picks] - looped) <= roundoff * scale):
            raise RuntimeError(
                f"batched J = {losses[picks]!r} but looped J = {looped!r} for "
                f"{self.names[position]}"
            )
        self.verified.add(position)

    def looped_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The same values one evaluation at a time, restoring each element after use."""
        set_element = self.element_setter(position)
        originals = self.flat_values(position, indices).tolist()
        out = np.empty(indices.size)
        for j, (index, value) in enumerate(zip(indices.tolist(), values.tolist())):
            set_element(index, value)
            try:
                if self.seed is not None:
                    self.reseed(self.seed)
                out[j] = float(np.asarray(first_of(self.loss(self.argument()))).reshape(()))
            finally:
                set_element(index, originals[j])
        return out


def batch_size(program: Any, needed: int) -> int:
    """Copies per compiled call: BATCH_MEMORY_BYTES over the largest array of the loss,
    at most MAX_BATCH, and no more than ``needed`` (rounded up to a power of 2)."""
    largest = max(
        (
            int(np.prod(v.aval.shape, dtype=np.int64)) * np.dtype(v.aval.dtype).itemsize
            for eqn in program.jaxpr.eqns
            for v in eqn.outvars
            if hasattr(v.aval, "shape")
        ),
        default=8,
    )
    by_memory = max(1, BATCH_MEMORY_BYTES // max(largest, 1))
    rounded = 1 << max(0, int(needed - 1).bit_length())
    return int(min(by_memory, MAX_BATCH, rounded))


def batch_group(
    program: Any, copies: dict[int, int], position: int, first_call: int
) -> tuple[tuple[int, ...], int]:
    """(the leaves compiled with ``position``, their batch size).

    ``copies``: the leaves a check may batch, with the copies a full check evaluates
    (two per element). Calls shorter than the leaf (``first_call``) mean the engine
    sends chunks of that length; else the batch size fits the largest leaf. A leaf
    joins if padding its last call to the batch size at most doubles its copies, or if
    the padding of all such leaves stays within PADDING_SHARE of the group's copies;
    when ``position`` itself does not join, it gets its own batch size (the others
    then join a later group)."""
    chunked = first_call < copies[position]
    needed = first_call if chunked else max(copies.values())
    count = batch_size(program, needed)
    group = padded_group(copies, count)
    if position in group:
        return group, count
    count = batch_size(program, first_call)
    rest = {p: n for p, n in copies.items() if p not in group or p == position}
    return padded_group(rest, count), count


def padded_group(copies: dict[int, int], count: int) -> tuple[int, ...]:
    """The leaves worth evaluating in batches of ``count`` (see :func:`batch_group`)."""
    waste = {p: -n % count for p, n in copies.items()}
    group = [p for p, n in copies.items() if waste[p] <= n]
    budget = PADDING_SHARE * sum(copies[p] for p in group)
    for p in sorted(set(copies) - set(group), key=waste.get):
        if waste[p] <= budget:
            group.append(p)
            budget -= waste[p]
    return tuple(sorted(group))


def compiled_program(closed: Any, arguments: list) -> Callable:
    """A traced program, compiled: (consts, arguments) → its outputs. Kept by its text
    (the constants are arguments), so a program traced again from changed Python state
    (a custom_vjp rule reading a global) is compiled again."""
    key = (str(closed.jaxpr), (), 0)
    if key not in _compiled:
        jaxpr = closed.jaxpr

        def run(consts: list, flat: list) -> list:
            return jax.core.eval_jaxpr(jaxpr, consts, *flat)

        keep(key, compile_lowered(jax.jit(run).lower(list(closed.consts), arguments)))
    return reuse(key)


def keep(key: tuple[str, tuple[int, ...], int], function: Callable) -> None:
    """Keep a compiled function for later checks (the COMPILED_FUNCTIONS last used)."""
    _compiled[key] = function
    while len(_compiled) > COMPILED_FUNCTIONS:
        _compiled.popitem(last=False)


def reuse(key: tuple[str, tuple[int, ...], int]) -> Callable:
    _compiled.move_to_end(key)
    return _compiled[key]


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Python's cycle collector skips the objects that exist on entry, until exit.

    Tracing and compiling allocate enough objects to set off a full collection, which
    walks every object of the process (0.13 s with torch and jax imported, more in a
    long notebook session) although none of them changed; frozen, it walks only what the
    tracing made. ``gc.unfreeze`` on exit puts everything back in the oldest generation.
    Left alone when the collector is off or something else froze objects.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
