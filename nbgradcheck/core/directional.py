"""Fast mode's measurements: directional tests of a tensor along random-sign directions.

A :class:`DirectionalTest` compares the numeric and analytic derivatives of the loss along
one direction; :class:`DirectionalTests` records a tensor's whole-tensor tests and how
localization went (see :mod:`nbgradcheck.core.localize`). The rules that judge them live
in :mod:`nbgradcheck.core.verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nbgradcheck.core.verdict import (
    DIRECTIONAL_FLOOR,
    Measurements,
    directional_excess,
    kink_explains,
)


@dataclass
class DirectionalTest:
    """One directional derivative of a group of elements, along the unit vector h/‖h‖."""

    size: int  # elements in the group
    numeric: float  # (J(θ+δ) − J(θ−δ)) / ‖h‖, h = the actual difference of the two points
    analytic: float  # g·h / ‖h‖ with the gradient under test (corrected while localizing)
    original: float  # the same with the model's own analytic gradient
    spread: float  # ‖g⊙h‖ / ‖h‖: the typical |analytic| over random signs
    noise: float  # round-off floor of ``numeric`` (+ the truncation bound of a refined test)
    theta: float  # θ·h / ‖h‖, for the missing-L2 diagnosis
    tol: float
    level: int = 0  # the steps were divided by REFINE_FACTOR**level
    trigger: bool = False  # the first failing screen test (left out of the verdict)
    left: float = float("nan")  # one-sided slopes (J₀ − J(θ−δ)) and (J(θ+δ) − J₀) along
    right: float = float("nan")  # the direction; central method only

    @property
    def discrepancy(self) -> float:
        return abs(self.numeric - self.analytic)

    def fails(self, analytic: float) -> bool:
        return self.excess(analytic) > 1 and not self.at_kink(analytic)

    def at_kink(self, analytic: float) -> bool:
        """A slope jump between θ−δ and θ+δ explains the discrepancy: ``analytic`` is one
        of the one-sided slopes (a ReLU unit close to its kink), as element-wise."""
        return bool(kink_explains(self.numeric, analytic, self.left, self.right, self.noise, True))

    def excess(self, analytic: float) -> float:
        """The discrepancy over the largest one that passes."""
        return directional_excess(self.numeric, analytic, self.spread, self.noise, self.tol)

    @property
    def failing(self) -> bool:
        """The gradient under test disagrees along this direction."""
        return self.fails(self.analytic)

    @property
    def failing_original(self) -> bool:
        """The model's own gradient disagrees along this direction."""
        return self.fails(self.original)


@dataclass
class DirectionalTests:
    """Fast mode's record for one tensor: whole-tensor tests and how localization went.

    ``status``: 'passed', 'localized' (every wrong element found), 'dense' (most sampled
    elements wrong: not localized), 'spread' (too many groups failed to follow),
    'unresolved' (directions still fail after the last round), 'checked one by one' (a
    small tensor), 'interrupted', 'not tested' or 'empty'.
    """

    tests: list[DirectionalTest] = field(default_factory=list)
    status: str = "not tested"
    group_tests: int = 0  # directional tests of parts of the tensor
    evaluations: int = 0  # loss evaluations spent on this tensor (all kinds)
    # elements checked one by one at random (unlike those localization picked for looking
    # wrong), with their transposition partners: an unbiased sample of the tensor
    sampled: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))

    @property
    def numeric(self) -> np.ndarray:
        return np.array([t.numeric for t in self.tests], dtype=float)

    @property
    def analytic(self) -> np.ndarray:
        """Directional derivatives of the model's own gradient."""
        return np.array([t.original for t in self.tests], dtype=float)

    @property
    def noise(self) -> np.ndarray:
        return np.array([t.noise for t in self.tests], dtype=float)

    @property
    def theta(self) -> np.ndarray:
        return np.array([t.theta for t in self.tests], dtype=float)

    @property
    def failing(self) -> np.ndarray:
        return np.array([t.failing_original for t in self.tests], dtype=bool)

    @property
    def at_kinks(self) -> np.ndarray:
        """Tests whose discrepancy (with the model's own gradient) a kink crossing explains."""
        return np.array([t.at_kink(t.original) for t in self.tests], dtype=bool)

    @property
    def unbiased(self) -> np.ndarray:
        """The tests that enter the verdict: all but kink crossings (excused, as elements
        at kinks are) and the one that triggered the localization (a test picked for
        failing would bias the verdict), unless no other is left. When every test crossed
        a kink, none enters: as a full check of a tensor whose every element crossed one."""
        kinks = self.at_kinks
        triggers = np.array([t.trigger for t in self.tests], dtype=bool)
        mask = ~kinks & ~triggers
        return mask if mask.any() else ~kinks

    def measurements(self) -> Measurements:
        """The unbiased whole-tensor tests, judged under the directional floor rule."""
        mask = self.unbiased
        return Measurements(
            self.numeric[mask], self.analytic[mask], self.noise[mask], DIRECTIONAL_FLOOR
        )
