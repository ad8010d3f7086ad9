"""Run a registered kernel on the C backend or its bit-identical Python twin.

>>> run("montecarlo_pi", {"seed": 1, "points": 1000})["inside"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any, Literal

from edge_agent import native
from edge_agent.core import kernels as core_kernels
from edge_agent.core.kernels import KernelError

__all__ = ["BACKENDS", "Execution", "KernelError", "names", "run"]

Backend = Literal["c", "python"]
BACKENDS: tuple[Backend, ...] = ("c", "python")

log = logging.getLogger(__name__)


def names() -> list[str]:
    return sorted(core_kernels.REGISTRY)


@functools.cache
def _warn_fallback() -> None:
    log.warning("C kernels not built or stale; using the Python twins (much slower)")


def _resolve_backend(backend: str) -> Backend:
    if backend not in BACKENDS:
        raise KernelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "c" and not native.AVAILABLE:
        _warn_fallback()
        return "python"
    return "c" if backend == "c" else "python"


class Execution:
    """One kernel task run in chunks, so the caller can pause, checkpoint and resume between them.

    ``state`` (a CBOR-able dict) is the checkpoint: pass it back as ``state=`` to resume, on
    either backend.
    """

    def __init__(
        self,
        name: str,
        params: dict[str, Any],
        backend: str = "c",
        state: dict[str, Any] | None = None,
    ) -> None:
        self.kernel = core_kernels.get(name)
        self.name = name
        self.backend = _resolve_backend(backend)
        self.params: dict[str, Any] = self.kernel.validate(params)
        self.total_units: int = self.kernel.work_units(self.params)
        self.state: dict[str, Any] = self.kernel.start(self.params) if state is None else state
        units = self.state.get("units") if isinstance(self.state, dict) else None
        if type(units) is not int or not 0 <= units <= self.total_units:
            raise KernelError("checkpoint state does not belong to these params")
        self._step = native.STEPS[name] if self.backend == "c" else self.kernel.step

    @property
    def done_units(self) -> int:
        return int(self.state["units"])

    @property
    def done(self) -> bool:
        return self.done_units >= self.total_units

    def step(self, max_units: int) -> int:
        """Run at most ``max_units`` (at least one indivisible piece); return the units done."""
        if self.done:
            return 0
        return int(self._step(self.params, self.state, max(1, max_units)))

    def checkpoint(self) -> dict[str, Any]:
        return copy.deepcopy(self.state)

    def result(self) -> dict[str, Any]:
        if not self.done:
            raise KernelError(f"{self.name}: {self.done_units}/{self.total_units} units done")
        return dict(self.kernel.result(self.params, self.state))


def run(
    name: str, params: dict[str, Any], backend: str = "c", chunk_units: int = 0
) -> dict[str, Any]:
    """Validate ``params`` and run kernel ``name`` to the end (in chunks if ``chunk_units`` > 0)."""
    ex = Execution(name, params, backend)
    budget = chunk_units if chunk_units > 0 else ex.total_units
    while not ex.done:
        ex.step(budget)
    return ex.result()
