"""The registry of lab steps and plans: step modules register here; the agent runs from here.

A step is a function registered with :func:`step`; a plan is a list of step names, so a scenario is
extended by adding a function and naming it in a plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Step:
    name: str
    func: Callable[[], str | None]
    needs: tuple[str, ...] = ()
    timeout: float = 180


@dataclass
class Registry:
    steps: dict[str, Step] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)


REGISTRY = Registry()


def step(
    name: str, needs: Iterable[str] = (), timeout: float = 180
) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
    """Register a step; the function returns an optional one-line note or raises StepFailed."""

    def deco(func: Callable[[], str | None]) -> Callable[[], str | None]:
        if name in REGISTRY.steps:
            raise ValueError(f"step {name} registered twice")
        REGISTRY.steps[name] = Step(name, func, tuple(needs), timeout)
        return func

    return deco


def plan(name: str, steps: list[str]) -> None:
    REGISTRY.plans[name] = steps
