"""What a device optimises: one objective, or a point on the latency-energy front.

A policy is a small immutable value, so an app can keep a few and switch between calls
(``runner.policy = "energy"`` when the battery runs low) and a runner can cache its last
decision per policy:

- ``"latency"`` and ``"energy"``: the plan's tables (exact breakpoints over bandwidth);
- :func:`slo`: the least energy whose predicted latency is within ``latency_ms``; if no
  cut is predicted to meet it, the fastest;
- :func:`budget`: the fastest whose predicted energy is within ``energy_mj``; if none
  is, the least energy (the nearest to the budget there is);
- :func:`weighted`: the least ``latency_ms + lam * energy_mj``.

The last three choose on :meth:`nscompile.runtime.plan.Plan.pareto_front`: the plan's
front for the condition, evaluated at the conditions the device measures. Every policy
has a text form, ``str(policy)``, which :func:`as_policy` reads back ("slo(latency_ms=120)").

Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nscompile.errors import NscompileError
from nscompile.runtime.plan import ParetoPoint

#: The objectives a plan has tables for; as policies they read those tables.
OBJECTIVE_NAMES = ("latency", "energy")


class Policy:
    """A rule that picks one point of a latency-energy front (see the module docstring).

    Attributes:
        objective: what :class:`~nscompile.runtime.policy.RunRecord` reports as its
            ``objective``: the table's name, or "pareto" for a policy choosing on the front.
        uses_tables: the policy reads the plan's per-objective tables rather than the front.
    """

    objective: str = "pareto"
    uses_tables: bool = False

    def pick(self, front: Sequence[ParetoPoint]) -> tuple[ParetoPoint, bool]:
        """The point of ``front`` (fastest first, energy falling) this policy takes, and
        whether its target was met (False: a fallback, e.g. an SLO no cut meets)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Objective(Policy):
    """Optimise one objective of the plan's tables: "latency" or "energy"."""

    name: str

    def __post_init__(self):
        if self.name not in OBJECTIVE_NAMES:
            raise NscompileError(f"unknown objective {self.name!r}; use one of {', '.join(OBJECTIVE_NAMES)}")

    @property
    def objective(self) -> str:  # type: ignore[override]
        return self.name

    uses_tables = True

    def pick(self, front: Sequence[ParetoPoint]) -> tuple[ParetoPoint, bool]:
        return (front[0] if self.name == "latency" else front[-1]), True

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class SLO(Policy):
    """The least energy whose predicted latency is within ``latency_ms``; else the fastest."""

    latency_ms: float

    def __post_init__(self):
        object.__setattr__(self, "latency_ms", _positive("slo", "latency_ms", self.latency_ms, "milliseconds"))

    def pick(self, front: Sequence[ParetoPoint]) -> tuple[ParetoPoint, bool]:
        within = [p for p in front if p.latency_ms <= self.latency_ms]
        # Energy falls along the front, so the slowest point within the SLO spends the least.
        return (within[-1], True) if within else (front[0], False)

    def __str__(self) -> str:
        return f"slo(latency_ms={self.latency_ms:g})"


@dataclass(frozen=True)
class Budget(Policy):
    """The fastest whose predicted energy is within ``energy_mj``; else the least energy."""

    energy_mj: float

    def __post_init__(self):
        object.__setattr__(self, "energy_mj", _positive("budget", "energy_mj", self.energy_mj, "millijoules"))

    def pick(self, front: Sequence[ParetoPoint]) -> tuple[ParetoPoint, bool]:
        within = [p for p in front if p.energy_mj <= self.energy_mj]
        return (within[0], True) if within else (front[-1], False)

    def __str__(self) -> str:
        return f"budget(energy_mj={self.energy_mj:g})"


@dataclass(frozen=True)
class Weighted(Policy):
    """The least ``latency_ms + lam * energy_mj`` (lam in ms per mJ, >= 0); ties go to the faster."""

    lam: float

    def __post_init__(self):
        lam = _number("weighted", "lam", self.lam)
        if lam < 0:
            raise NscompileError(f"weighted(lam={self.lam!r}): lam must be >= 0 (ms per mJ; 0 is latency only)")
        object.__setattr__(self, "lam", lam)

    def pick(self, front: Sequence[ParetoPoint]) -> tuple[ParetoPoint, bool]:
        return min(front, key=lambda p: p.latency_ms + self.lam * p.energy_mj), True

    def __str__(self) -> str:
        return f"weighted({self.lam:g})"


LATENCY = Objective("latency")
ENERGY = Objective("energy")


def slo(latency_ms: float) -> SLO:
    """Answer within ``latency_ms`` (predicted) using the least device energy; if no cut can, the fastest.

    Raises:
        NscompileError: ``latency_ms`` is not a positive finite number.
    """
    return SLO(latency_ms)


def budget(energy_mj: float) -> Budget:
    """The fastest cut whose predicted device energy is within ``energy_mj``; if none is, the least energy.

    Raises:
        NscompileError: ``energy_mj`` is not a positive finite number.
    """
    return Budget(energy_mj)


def weighted(lam: float) -> Weighted:
    """Minimise ``latency_ms + lam * energy_mj`` (lam in ms per mJ: what one millijoule is worth).

    Raises:
        NscompileError: ``lam`` is negative or not a finite number.
    """
    return Weighted(lam)


_CALL = re.compile(r"^\s*(slo|budget|weighted)\s*\(\s*(?:(\w+)\s*=\s*)?([^()=\s]+)\s*\)\s*$")
_ARGUMENT = {"slo": "latency_ms", "budget": "energy_mj", "weighted": "lam"}
_MAKERS = {"slo": slo, "budget": budget, "weighted": weighted}


def as_policy(value: str | Policy) -> Policy:
    """A policy from itself or its text form.

    Args:
        value: a :class:`Policy`, or "latency", "energy", "slo(latency_ms=X)",
            "budget(energy_mj=Y)", "weighted(LAM)" (the keyword may be left out).

    Returns:
        The policy.

    Raises:
        NscompileError: anything else, naming the forms that are understood.
    """
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in OBJECTIVE_NAMES:
            return Objective(text)
        match = _CALL.match(text)
        if match:
            kind, keyword, number = match.groups()
            if keyword is not None and keyword != _ARGUMENT[kind]:
                raise NscompileError(f"policy {value!r}: {kind}() takes {_ARGUMENT[kind]}=, not {keyword}=")
            try:
                parsed = float(number)
            except ValueError:
                raise NscompileError(f"policy {value!r}: {number!r} is not a number") from None
            return _MAKERS[kind](parsed)
    raise NscompileError(f"unknown policy {value!r}; use latency, energy, slo(latency_ms=X), budget(energy_mj=Y) "
                         "or weighted(LAM), or the objects slo(), budget(), weighted() of nscompile.runtime")


def _number(kind: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NscompileError(f"{kind}({name}={value!r}): {name} must be a finite number")
    return float(value)


def _positive(kind: str, name: str, value, unit: str) -> float:
    number = _number(kind, name, value)
    if number <= 0:
        raise NscompileError(f"{kind}({name}={value!r}): {name} must be a positive number of {unit}")
    return number
