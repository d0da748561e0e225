"""Energy per request, measured where the hardware reports it, estimated elsewhere.

Sources, all read as cumulative joule counters:
- "rapl": Intel/AMD RAPL package domains under /sys/class/powercap (intel-rapl:N;
  their sub-zones are already included in the package figure), read as deltas
  of `energy_uj`, wrap-around handled with `max_energy_range_uj`.
- "nvml": NVIDIA GPUs' total energy counter, when `pynvml` is installed.
- "estimate": neither is readable, so a constant power is assumed:
  energy = TRAMONTANE_ESTIMATED_WATTS (default 65 W, a typical CPU package under
  load) × wall time. Records carry `energy_source="estimate"` so reports never
  pass a guess off as a measurement.

Splitting: the counters are read whenever a request starts or ends; the energy
of each interval between two such events goes to the requests running in it,
in proportion to tokens × time. Every request active in an interval spans all
of it, so that is a split by tokens (a request's final count once it ends, its
count so far, or the weight it started with, while it runs). Energy spent while
no request runs (idle power) is charged to no one. Each process meters its own
requests.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ROOT = Path("/sys/class/powercap")
ESTIMATED_WATTS_ENV = "TRAMONTANE_ESTIMATED_WATTS"
DEFAULT_ESTIMATED_WATTS = 65.0
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")


class EnergyCounter(Protocol):
    name: str

    def read_joules(self) -> float:
        """Energy used since the counter was opened."""
        ...


class RaplCounter:
    name = "rapl"

    def __init__(self, zones: Sequence[tuple[Path, int]]):
        self._zones = list(zones)
        self._last = [self._read(path) for path, _ in self._zones]
        self._total_uj = 0

    @classmethod
    def open(cls, root: Path = POWERCAP_ROOT) -> RaplCounter | None:
        """The package zones that can be read (RAPL is often root-only), or None."""
        zones = []
        for zone in sorted(root.glob("intel-rapl:*")):
            if not _PACKAGE_ZONE.fullmatch(zone.name):
                continue
            try:
                cls._read(zone / "energy_uj")
                max_range = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            zones.append((zone / "energy_uj", max_range))
        return cls(zones) if zones else None

    @staticmethod
    def _read(path: Path) -> int:
        return int(path.read_text())

    def read_joules(self) -> float:
        for i, (path, max_range) in enumerate(self._zones):
            value = self._read(path)
            delta = value - self._last[i]
            if delta < 0:  # the counter wrapped around
                delta += max_range
            self._total_uj += delta
            self._last[i] = value
        return self._total_uj / 1e6


class NvmlCounter:
    name = "nvml"

    def __init__(self, nvml: Any, handles: Sequence[Any]):
        self._nvml = nvml
        self._handles = list(handles)
        self._start_mj = self._read_mj()

    @classmethod
    def open(cls) -> NvmlCounter | None:
        """GPUs whose energy counter NVML reports (Volta and newer), or None."""
        try:
            import pynvml  # optional: only on machines with NVIDIA drivers
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handles = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                handles.append(handle)
        except pynvml.NVMLError:
            return None
        return cls(pynvml, handles) if handles else None

    def _read_mj(self) -> int:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    def read_joules(self) -> float:
        return (self._read_mj() - self._start_mj) / 1e3


class EstimateCounter:
    name = "estimate"

    def __init__(self, watts: float, clock: Callable[[], float] = time.monotonic):
        self.watts = watts
        self._clock = clock
        self._start = clock()

    def read_joules(self) -> float:
        return self.watts * (self._clock() - self._start)


def detect_counters() -> list[EnergyCounter]:
    counters: list[EnergyCounter] = [c for c in (RaplCounter.open(), NvmlCounter.open()) if c is not None]
    if not counters:
        watts = float(os.environ.get(ESTIMATED_WATTS_ENV) or DEFAULT_ESTIMATED_WATTS)
        counters.append(EstimateCounter(watts))
    return counters


@dataclass
class EnergySpan:
    """One request's share of the energy, accumulated while it runs."""

    tokens: int = 1
    joules: float = 0.0
    finished: bool = False


@dataclass(frozen=True)
class EnergyReading:
    wh: float
    source: str


class EnergyMeter:
    def __init__(self, counters: Sequence[EnergyCounter] | None = None):
        self._counters = list(detect_counters() if counters is None else counters)
        self.source = "+".join(c.name for c in self._counters)
        self._lock = threading.Lock()
        self._active: list[EnergySpan] = []
        self._last_joules = self._read()

    def _read(self) -> float:
        return sum(c.read_joules() for c in self._counters)

    def _advance(self) -> None:
        """Hands the energy used since the last event to the requests now running."""
        joules = self._read()
        delta, self._last_joules = joules - self._last_joules, joules
        total = sum(span.tokens for span in self._active)
        for span in self._active:
            span.joules += delta * span.tokens / total

    def begin(self, weight_tokens: int = 1) -> EnergySpan:
        """Starts metering a request; `weight_tokens` is its size as far as known
        (the prompt's length, say), used until it reports more."""
        span = EnergySpan(tokens=max(1, weight_tokens))
        with self._lock:
            self._advance()
            self._active.append(span)
        return span

    def progress(self, span: EnergySpan, tokens: int) -> None:
        """Updates a running request's token count (for a fairer split of long ones)."""
        with self._lock:
            self._advance()
            span.tokens = max(1, tokens)

    def finish(self, span: EnergySpan, tokens: int | None = None) -> EnergyReading:
        """Stops metering; `tokens` is the request's final prompt + completion count."""
        with self._lock:
            if not span.finished:
                if tokens is not None:
                    span.tokens = max(1, tokens)
                self._advance()
                self._active.remove(span)
                span.finished = True
        return EnergyReading(wh=span.joules / 3600.0, source=self.source)
