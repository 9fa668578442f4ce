"""Fast mode: directional checks along random-sign directions, and adaptive group testing
that finds the wrong elements (pure NumPy, no IPython).

For each tensor:

1. **Screen.** Up to ``DIRECTIONS`` whole-tensor tests. A test draws random signs s and
   perturbs every element at once by its own step: δ = s ⊙ step. It compares the
   numeric directional change J(θ+δ) − J(θ−δ) with the analytic one g·h, h = (θ+δ) −
   (θ−δ) as rounded to the dtype, both divided by ‖h‖ (derivatives along a unit vector,
   comparable with element-wise ones). Two evaluations per test. A failing test is
   repeated with smaller steps: truncation (curvature, kinks crossed by the long step)
   shrinks with the step, and the change between two steps bounds it; a wrong
   gradient's discrepancy does not shrink. Tensors of at most ``DIRECTIONS`` elements
   are checked element by element instead (cheaper, exact).
2. **Sample.** A failing tensor gets ``SAMPLE_ELEMENTS`` element-wise checks spread over
   it (plus their transposition partners, for the diagnosis). When many of them fail the
   bug is dense (a scale, a transpose): localizing it would cost more than it tells.
3. **Localize.** Otherwise adaptive group testing: split the candidates into halves, test
   each half with up to ``HALF_DIRECTIONS`` random-sign directions restricted to it,
   recurse into halves that fail, and check the elements of groups of at most
   ``LEAF_SIZE`` one by one (the engine's element checks, refinement included). Halves
   are contiguous in C order, so a wrong row is isolated quickly.
4. **Verify.** The analytic gradient, corrected at the wrong elements found, is tested
   again along ``DIRECTIONS`` fresh whole-tensor directions; a failure starts another
   round of localization (at most ``MAX_ROUNDS``).

Single tests decide where to look. The verdict on a tensor uses unbiased measurements
only, judged as a full check judges a whole tensor: the relative difference over its
whole-tensor tests (the model's own gradient against the numeric values, within
``FLOOR_SLACK`` times their round-off floor), and over the elements sampled at random.
The elements localization checked say where, not whether: they were picked for looking
wrong, and in float32 those are often elements whose steps straddle kinks.

False negatives. Write e = analytic − true gradient. A test sees Σ eᵢ·hᵢ·sᵢ. If the group
holds one wrong element the test sees |eᵢhᵢ| whatever the signs: it cannot miss it.
Otherwise flipping the sign of the element with the largest |eᵢhᵢ| moves the sum by twice
that amount, so of each such pair of sign vectors at most one lands closer to 0 than
|eᵢhᵢ|: one random direction misses an error larger than the test's threshold with
probability at most 1/2 (reached only when two errors cancel exactly), and ``DIRECTIONS``
= 16 independent directions with probability at most 2⁻¹⁶ ≈ 1.5e-5 per tensor.
Localization tests halves with only 2 directions; an element it misses leaves the
corrected gradient wrong, and the verification (16 fresh directions) catches that with
the same 2⁻¹⁶ bound. Resolution: a test's threshold scales with the gradient norm of
the group, so at the tensor level an element is seen when its error exceeds about
tol·‖g‖ of its tensor (a full check resolves tol·|gᵢ|), or the round-off floor of a
directional test when that is larger (float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbgradcheck.adapters.numpy import contiguous
from nbgradcheck.core.diagnose import transposition_partners
from nbgradcheck.core.directional import DirectionalTest, DirectionalTests
from nbgradcheck.core.engine import (
    REFINE_FACTOR,
    REFINE_LEVELS,
    CheckSetup,
    evaluate_plan,
    ignore_tick,
    measuring,
    probe_repeatability,
    refine_failing,
    result_notes,
)
from nbgradcheck.core.evaluate import GroupPoints
from nbgradcheck.core.plan import (
    FAST_DIRECTIONS,
    TensorPlan,
    elements_to_check,
    ensure_resolved,
    planned_points,
)
from nbgradcheck.core.progress import chunk_size, open_bar, should_show
from nbgradcheck.core.result import ELEMENT_ARRAYS, CheckResult, TensorCheck
from nbgradcheck.core.schemes import CENTRAL, NOISE_FACTOR, Scheme
from nbgradcheck.errors import NonFiniteLossError

# Whole-tensor directions: a tensor whose gradient is wrong passes all of them with
# probability at most 2**-DIRECTIONS (see the module docstring). Tensors of at most this
# many elements are checked one by one instead (no more evaluations, and exact).
DIRECTIONS = FAST_DIRECTIONS
# The round-off floor of a directional test is this many times the engine's estimate for
# one element: when every element moves, the rounding errors of J(θ+δ) and J(θ−δ) no
# longer cancel in part (measured on float32 ReLU networks: up to about 3 times).
NOISE_MARGIN = 4.0
# Whole-tensor tests run on a failing tensor in all, for the diagnosis.
PATTERN_DIRECTIONS = 3
# Directions tried on each half during localization before it is called clean.
HALF_DIRECTIONS = 2
# Groups this small are checked element by element.
LEAF_SIZE = 32
# Element-wise checks spread over a failing tensor before localizing it.
SAMPLE_ELEMENTS = 8
# When this share of the sampled elements fails, the bug is dense: no localization.
DENSE_FRACTION = 0.25
# Localization stops (the bug is spread out) when more groups than this fail at once.
MAX_FAILING_GROUPS = 64
MAX_ROUNDS = 3


def dot(first: np.ndarray, second: np.ndarray) -> float:
    """Σ first·second without BLAS (whose threads stall on a busy machine) and without a
    temporary array."""
    return float(np.einsum("i,i->", first, second))


def random_signs(rng: np.random.Generator, size: int) -> np.ndarray:
    """±1 at random (int8): +1 where the top bit of a random byte is set.

    The very signs ``rng.integers(0, 2, size, dtype=np.int8) * 2 - 1`` draws (NumPy takes
    the top bit of each byte of 32-bit words, low byte first), so a seed gives the same
    directions as before, at a quarter of the cost.
    """
    words = rng.integers(0, 2**32, -(-size // 4), dtype=np.uint32)
    signs = words.astype("<u4", copy=False).view(np.int8)[:size]
    np.invert(signs, out=signs)  # the top bit set where the sign is -1
    np.right_shift(signs, 7, out=signs)  # -1 there, 0 elsewhere
    np.bitwise_or(signs, 1, out=signs)
    return signs


class Scratch:
    """Arrays one tensor's directional tests write into instead of allocating: the
    points of a batch of groups side by side, and float64 work space for their numbers.
    A whole-tensor test of 400,000 elements then allocates (and page-faults) nothing."""

    def __init__(self, size: int, dtype: np.dtype) -> None:
        self.up, self.down = np.empty(size, dtype), np.empty(size, dtype)
        self.work = np.empty((2, size))

    def point_slots(self, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Disjoint (up, down) views for groups of these sizes (None once full)."""
        slots: list[tuple[np.ndarray, np.ndarray] | None] = []
        start = 0
        for size in sizes:
            stop = start + size
            fits = stop <= self.up.size
            slots.append((self.up[start:stop], self.down[start:stop]) if fits else None)
            start = stop if fits else start
        return slots

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Two float64 arrays of ``size`` elements (reused by the next test)."""
        if size > self.work.shape[1]:
            return np.empty(size), np.empty(size)
        return self.work[0, :size], self.work[1, :size]


# -- one tensor -----------------------------------------------------------------------------


class TensorSearch:
    """Fast mode's state for one tensor: screen, sample, localize, verify."""

    def __init__(
        self,
        setup: CheckSetup,
        position: int,
        scheme: Scheme,
        eps: float | str,
        tol: float,
        rng: np.random.Generator,
    ) -> None:
        params = setup.params
        self.setup, self.position, self.scheme, self.eps = setup, position, scheme, eps
        self.tol, self.rng = tol, rng
        self.name = params.names[position]
        self.shape = tuple(int(n) for n in params.shapes[position])
        self.dtype = np.dtype(params.dtypes[position])
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.everything = np.arange(self.size, dtype=np.int64)
        self.values = params.flat_values(position, self.everything)
        self.values64 = self.values.astype(np.float64)
        self.steps = scheme.step_sizes(self.values64, eps, setup.unit_roundoff)
        # both sides: a directional test flips signs element by element
        self.plus, self.minus = planned_points(
            CENTRAL, self.values64, self.steps, self.dtype, self.name, self.everything, self.shape
        )
        self.analytic = setup.analytic[position].reshape(-1)
        self.corrected = self.analytic.copy()
        self.step_level = 0
        self.failing_signs = np.ones(self.size, dtype=np.int8)  # of the last failing test
        self.record = DirectionalTests(status="empty" if self.size == 0 else "not tested")
        self.checks: list[TensorCheck] = []
        self.checked = np.zeros(self.size, dtype=bool)
        self.chunk = chunk_size(setup.seconds_per_evaluation * 2)
        self.directional_evaluations = 0
        self.element_evaluations = 0
        self.scratch: Scratch | None = None  # while the search runs

    # -- the procedure ----------------------------------------------------------------
    def run(self) -> None:
        """Screen, sample, localize, verify; counts this tensor's directional evaluations."""
        self.scratch = Scratch(self.size, self.dtype)
        try:
            self.search()
        finally:
            self.scratch = None

    def search(self) -> None:
        if self.size == 0:
            return
        if self.size <= DIRECTIONS:
            self.check_elements(self.everything)
            self.record.status = "checked one by one"
            return
        if not self.screen():
            self.record.status = "passed"
            return
        self.record.sampled = self.sample(self.everything, SAMPLE_ELEMENTS, partners=True)
        if self.is_dense():
            self.record.status = "dense"
            return
        self.record.status = self.localize()

    def screen(self) -> bool:
        """Whole-tensor tests until one fails (then a few more for the diagnosis)."""
        for _ in range(DIRECTIONS):
            test = self.whole_tensor_test()
            if test.failing:
                test.trigger = True
                for _ in range(PATTERN_DIRECTIONS - 1):
                    self.whole_tensor_test()
                return True
        return False

    def verify(self) -> bool:
        """``DIRECTIONS`` whole-tensor tests of the corrected gradient, all of them (so
        the verdict sees an unbiased sample of directions); True when none fails."""
        failing = [self.whole_tensor_test().failing for _ in range(DIRECTIONS)]
        return not any(failing)

    def localize(self) -> str:
        if self.failing_found() and self.verify():
            return "localized"
        for _ in range(MAX_ROUNDS):
            root = np.flatnonzero(~self.checked)
            leaves = self.bisect(root, self.failing_signs[root])
            if leaves is None:
                return "spread"
            self.check_elements(leaves)
            if self.verify():
                return "localized"
        return "unresolved"

    def bisect(self, root: np.ndarray, signs: np.ndarray) -> np.ndarray | None:
        """Indices of the small groups that still fail; None when too many groups fail.

        ``root`` is known to fail along ``signs``. Halves are contiguous in C order, so a
        wrong row is isolated in few steps.
        """
        queue, leaves = [(root, signs)], []
        while queue:
            leaves += [group for group, _ in queue if group.size <= LEAF_SIZE]
            queue = self.failing_groups(
                [
                    (group[half], signs[half])
                    for group, signs in queue
                    if group.size > LEAF_SIZE
                    for half in (
                        slice(None, (group.size + 1) // 2),
                        slice((group.size + 1) // 2, None),
                    )
                ]
            )
            if len(queue) > MAX_FAILING_GROUPS:
                self.sample(
                    np.concatenate([group for group, _ in queue]),
                    2 * SAMPLE_ELEMENTS,
                    partners=False,
                )
                return None
        return np.concatenate(leaves) if leaves else np.array([], dtype=np.int64)

    def failing_groups(
        self, groups: list[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (group, signs) failing one of up to HALF_DIRECTIONS directional tests.

        The first test of a half uses the signs its parent failed along: the parent's
        discrepancy is the sum of its halves', so one of them keeps at least half of it
        (errors that cancel along fresh signs stay visible). Later tests draw fresh signs.
        The groups are independent, so each round tests every group not yet failing
        together: on the workers with ``executor=``/``n_jobs=``, with the same results.
        """
        failing: list[np.ndarray | None] = [None] * len(groups)
        for attempt in range(HALF_DIRECTIONS):
            pending = [i for i, signs in enumerate(failing) if signs is None]
            signs = [
                groups[i][1] if attempt == 0 else random_signs(self.rng, groups[i][0].size)
                for i in pending
            ]
            self.record.group_tests += len(pending)
            tests = self.tests([groups[i][0] for i in pending], signs, self.step_level)
            for i, tried, test in zip(pending, signs, tests):
                if test.failing:
                    failing[i] = tried
        return [(group, signs) for (group, _), signs in zip(groups, failing) if signs is not None]

    def tests(
        self, groups: list[np.ndarray], signs: list[np.ndarray], level: int
    ) -> list[DirectionalTest | None]:
        """Directional tests of several groups, their losses computed together by the
        evaluator (on the workers in one batch with ``executor=``/``n_jobs=``)."""
        slots = (
            self.scratch.point_slots([g.size for g in groups])
            if self.scratch is not None
            else [None] * len(groups)
        )
        points = [
            self.points(contiguous(g), s, level, slot) for g, s, slot in zip(groups, signs, slots)
        ]
        requests: list[GroupPoints] = [
            None if p is None else (g, *p) for g, p in zip(groups, points)
        ]
        losses = iter(self.setup.evaluator.group_losses(self.position, requests, self.scheme))
        tests = []
        for group, point in zip(groups, points):
            if point is None:
                tests.append(None)
                continue
            j_up, j_down = self.losses_of(group, losses)
            tests.append(self.directional_test(group, point, j_up, j_down, level))
        return tests

    def losses_of(self, group: np.ndarray, losses: Any) -> tuple[float, float]:
        """J at the group's two points (J₀ for a side the scheme does not evaluate)."""
        j0 = self.setup.loss_value
        j_up = next(losses) if self.scheme.plus else j0
        j_down = next(losses) if self.scheme.minus else j0
        self.directional_evaluations += self.scheme.evaluations_per_element
        for value in (j_up, j_down):
            if not np.isfinite(value):
                raise NonFiniteLossError(
                    f"the loss became {value} when {group.size} elements of {self.name} "
                    f"were perturbed together by about "
                    f"{float(np.median(self.steps[group])):.1e} each; parameters restored. "
                    f"Use a smaller eps or mode='full'"
                )
        return j_up, j_down

    # -- directional tests ------------------------------------------------------------
    def whole_tensor_test(self) -> DirectionalTest:
        """A test of the whole tensor, recorded; a failure is retried at smaller steps.

        Truncation (curvature, kinks crossed by a long step) shrinks with the step, so
        the change of the numeric value from one step to the next bounds the error of the
        smaller step; it joins that test's floor. A wrong gradient's discrepancy does not
        change with the step, so it still fails. A smaller step that passes is kept for
        the rest of the tensor (steps shrink by at most REFINE_FACTOR**REFINE_LEVELS); a
        test failing at the smallest step is compared with the next larger one.
        """
        signs = random_signs(self.rng, self.size)
        test = self.test(self.everything, signs, self.step_level)
        compared = False
        while test.failing and test.level < REFINE_LEVELS:
            finer = self.test(self.everything, signs, test.level + 1)
            if finer is None:
                break
            finer.noise = max(finer.noise, abs(finer.numeric - test.numeric))
            test, compared = finer, True
            if not test.failing:
                self.step_level = test.level
        if test.failing and not compared and test.level > 0:
            coarser = self.test(self.everything, signs, test.level - 1)
            test.noise = max(test.noise, abs(test.numeric - coarser.numeric))
        if test.failing:
            self.failing_signs = signs
        self.record.tests.append(test)
        return test

    def test(self, group: np.ndarray, signs: np.ndarray, level: int) -> DirectionalTest | None:
        """Evaluate one directional test; None when the step rounds away at this level."""
        return self.tests([group], [signs], level)[0]

    def directional_test(
        self,
        group: np.ndarray,
        points: tuple[np.ndarray, np.ndarray],
        j_up: float,
        j_down: float,
        level: int,
    ) -> DirectionalTest:
        """The test's numbers from the losses at its two points."""
        where = contiguous(group)
        up, down = (side.astype(np.float64, copy=False) for side in points)
        h, work = (
            self.scratch.buffers(group.size)
            if self.scratch is not None
            else (np.empty(group.size), np.empty(group.size))
        )
        np.subtract(up, down, out=h)
        length = float(np.sqrt(dot(h, h)))
        weighted = np.multiply(self.corrected[where], h, out=work)  # g·h, per element
        analytic, spread = float(weighted.sum()), float(np.sqrt(dot(weighted, weighted)))
        theta, j0 = self.values64[where], self.setup.loss_value
        roundoff = (
            NOISE_MARGIN * NOISE_FACTOR * self.setup.unit_roundoff * (abs(j_up) + abs(j_down))
        )
        left, right = float("nan"), float("nan")
        if self.scheme.sees_kinks:
            left = (j0 - j_down) / dot(np.subtract(theta, down, out=work), h) * length
            right = (j_up - j0) / dot(np.subtract(up, theta, out=work), h) * length
        return DirectionalTest(
            size=int(group.size),
            numeric=(j_up - j_down) / length,
            analytic=analytic / length,
            original=dot(self.analytic[where], h) / length,
            spread=spread / length,
            noise=roundoff / length,
            theta=dot(theta, h) / length,
            tol=self.tol,
            level=level,
            left=left,
            right=right,
        )

    def points(
        self,
        where: np.ndarray | slice,
        signs: np.ndarray,
        level: int,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The two points θ+δ and θ−δ over a group (θ itself for an unused side), written
        into ``out`` when given."""
        values = self.values[where]
        if level == 0:
            plus, minus = self.plus[where], self.minus[where]
        else:
            steps = self.steps[where] / REFINE_FACTOR**level
            plus = (self.values64[where] + steps).astype(self.dtype)
            minus = (self.values64[where] - steps).astype(self.dtype)
            if np.any(plus == minus):
                return None
        return self.scheme.directional_points(plus, minus, values, signs, out)

    # -- element-wise checks ------------------------------------------------------------
    def sample(self, pool: np.ndarray, count: int, partners: bool) -> np.ndarray:
        """Check ``count`` elements spread over ``pool`` (and their transposition
        partners); returns their indices."""
        picked = elements_to_check(pool.size, "sample", count, self.rng)
        chosen = pool if picked is None else pool[picked]
        if partners:
            chosen = np.concatenate([chosen, *transposition_partners(chosen, self.shape)])
        self.check_elements(chosen)
        return np.unique(chosen)

    def check_elements(self, indices: np.ndarray) -> None:
        """The engine's element-wise check (refinement included) of unchecked elements."""
        indices = np.setdiff1d(indices, np.flatnonzero(self.checked))
        if not indices.size:
            return
        plan = self.element_plan(indices)
        tensor, outputs = measuring(plan, self.setup, self.scheme, self.tol)
        interrupted = False
        try:
            evaluate_plan(self.setup, plan, self.scheme, outputs, ignore_tick, self.chunk)
        except KeyboardInterrupt:
            interrupted = True
        self.element_evaluations += outputs.evaluations
        self.checks.append(tensor)
        self.checked[indices] = True
        if interrupted:
            raise KeyboardInterrupt
        self.element_evaluations += refine_failing(
            plan, tensor, self.setup, self.scheme, self.chunk, self.tol
        )
        wrong = tensor.element_failing & ~tensor.kink
        self.corrected[tensor.indices[wrong]] = tensor.numeric[wrong]

    def element_plan(self, indices: np.ndarray) -> TensorPlan:
        plan = TensorPlan(
            self.position,
            self.name,
            self.shape,
            self.dtype,
            indices,
            self.values[indices],
            self.scheme,
            self.eps,
            self.setup.unit_roundoff,
        )
        return ensure_resolved(plan)

    def failing_found(self) -> bool:
        return any(bool((t.element_failing & ~t.kink).any()) for t in self.checks)

    def is_dense(self) -> bool:
        evaluated = sum(int(t.evaluated.sum()) for t in self.checks)
        failing = sum(int((t.element_failing & ~t.kink).sum()) for t in self.checks)
        return failing >= 2 and failing >= DENSE_FRACTION * evaluated

    # -- the result -----------------------------------------------------------------------
    def result(self) -> TensorCheck:
        """A TensorCheck over the elements checked one by one, with the directional record."""
        self.record.evaluations = self.directional_evaluations + self.element_evaluations
        tensor = merged_checks(self.checks, self.template())
        tensor.directional = self.record
        return tensor

    def template(self) -> TensorCheck:
        empty = np.array([], dtype=np.float64)
        return TensorCheck(
            self.name,
            self.shape,
            self.dtype,
            np.array([], dtype=np.int64),
            empty,
            empty,
            empty,
            empty,
            empty,
            np.array([], dtype=bool),
            self.setup.analytic[self.position],
            self.tol,
        )


def merged_checks(parts: list[TensorCheck], template: TensorCheck) -> TensorCheck:
    """One TensorCheck holding the elements of ``parts`` (disjoint), sorted by index."""
    if not parts:
        return template
    order = np.argsort(np.concatenate([p.indices for p in parts]), kind="stable")
    joined = {
        name: np.concatenate([np.asarray(getattr(p, name)) for p in parts])[order]
        for name in ELEMENT_ARRAYS
    }
    template.checked_indices, template.steps = joined.pop("indices"), joined.pop("step")
    template.round_off = joined.pop("noise")
    for name, array in joined.items():
        setattr(template, name, array)
    return template


# -- the whole check ------------------------------------------------------------------------


def fast_check(
    setup: CheckSetup,
    scheme: Scheme,
    eps: float | str,
    tol: float,
    seed: int | None,
    progress: bool | None,
    notes: list[str],
) -> CheckResult:
    """mode='fast': directional screening of every tensor, localization of failures."""
    rng = np.random.default_rng(seed)
    searches = [
        TensorSearch(setup, position, scheme, eps, tol, rng)
        for position in range(len(setup.params.names))
    ]
    minimum = DIRECTIONS * len(searches) * scheme.evaluations_per_element
    expected = setup.seconds_per_evaluation * minimum / setup.evaluator.workers
    total = sum(s.size for s in searches)
    bar = open_bar(setup.make_bar, total, should_show(progress, expected))
    complete = True
    try:
        for search in searches:
            bar.describe(search.name)
            try:
                if complete:
                    search.run()
            except KeyboardInterrupt:
                complete = False
                search.record.status = "interrupted"
            bar.advance(search.size)
    finally:
        bar.close()
    tensors = [search.result() for search in searches]
    evaluations = 2 + sum(s.directional_evaluations + s.element_evaluations for s in searches)
    if complete:
        spent, complete = probe_repeatability(tensors, setup)
        evaluations += spent
    notes = notes + fast_notes(tensors)
    notes += result_notes(tensors, setup, scheme)
    return CheckResult(
        tensors,
        scheme.name,
        eps,
        "fast",
        tol,
        evaluations,
        setup.loss_value,
        complete=complete,
        notes=notes,
    )


def fast_notes(tensors: list[TensorCheck]) -> list[str]:
    """What fast mode did, and where it could not localize."""
    tests = sum(len(t.directional.tests) + t.directional.group_tests for t in tensors)
    notes = [
        f"fast mode: {tests} directional tests; a tensor with a wrong "
        f"element passes all {DIRECTIONS} whole-tensor directions with probability at "
        f"most 2^-{DIRECTIONS}; elements not listed in result.elements(name) were covered "
        f"by directional tests only"
    ]
    stopped = {
        "dense": "most sampled elements are wrong, so the bug is spread over the tensor; "
        "localization skipped (see the diagnosis)",
        "spread": f"localization stopped: more than {MAX_FAILING_GROUPS} groups failed at "
        f"once; the elements listed are some of the wrong ones (mode='full' checks "
        f"all)",
        "unresolved": f"directions still fail after {MAX_ROUNDS} rounds of localization; "
        f"the elements listed are some of the wrong ones (mode='full' checks "
        f"all)",
    }
    notes += [
        f"{t.name}: {stopped[t.directional.status]}"
        for t in tensors
        if t.directional.status in stopped and not t.passed
    ]
    return notes
