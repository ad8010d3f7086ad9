"""The device under the agent: a HAL reading and the clock the governor runs on.

:class:`RealDevice` is the hardware as it is; :class:`SimulatedDevice` steps ``hal.simulated``
along with the wall clock (optionally faster), at the load the agent puts on it.
"""

from __future__ import annotations

import time
from typing import Protocol

from hal.simulated import SimulatedBackend
from hal.state import Backend, DeviceState


class Device(Protocol):
    """What the agent needs of a device: readings, a clock for the governor, and a load input."""

    speedup: float  # device seconds per wall second (1 on real hardware)

    def read(self) -> DeviceState: ...

    def clock_s(self) -> float: ...

    def minute_of_day(self) -> int: ...

    def set_load(self, load: float) -> None: ...


class RealDevice:
    """Real hardware: the monotonic clock, local time, and the load is whatever we run."""

    speedup = 1.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def read(self) -> DeviceState:
        return self.backend.read()

    def clock_s(self) -> float:
        return time.monotonic()

    def minute_of_day(self) -> int:
        local = time.localtime()
        return local.tm_hour * 60 + local.tm_min

    def set_load(self, load: float) -> None:
        pass  # real hardware heats by itself


class SimulatedDevice:
    """hal.simulated stepped along with the wall clock, ``speedup`` times faster, at the load
    the agent puts on it (a fraction of all cores), so heat and charge follow what it runs."""

    def __init__(self, sim: SimulatedBackend, speedup: float = 1.0) -> None:
        self.sim = sim
        self.speedup = speedup
        self._load = 0.0
        self._wall = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        dt = (now - self._wall) * self.speedup
        self._wall = now
        if dt > 0:
            self.sim.step(dt, self._load)

    def read(self) -> DeviceState:
        self._advance()
        return self.sim.read()

    def clock_s(self) -> float:
        self._advance()
        return self.sim.t_s

    def minute_of_day(self) -> int:
        return int(self.sim.minute_of_day)

    def set_load(self, load: float) -> None:
        self._advance()
        self._load = min(max(load, 0.0), 1.0)


def device_for(backend: Backend, speedup: float) -> Device:
    """The simulated device for a simulated backend (run ``speedup`` times faster), else real."""
    if isinstance(backend, SimulatedBackend):
        return SimulatedDevice(backend, speedup)
    return RealDevice(backend)
