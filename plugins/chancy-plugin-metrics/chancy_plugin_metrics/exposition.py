"""Counters, histograms and gauges, rendered in the Prometheus text format (version 0.0.4).

A few dozen lines instead of a dependency: the plugin needs three metric kinds,
label values escaped by the format's rules, and one instance per app (no
process-global registry, so two apps in one process never mix their counts).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Histogram", "escape", "format_value", "sample"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """A sample value or ``le`` bound as Prometheus writes it (``+Inf``, ``0.25``, ``3``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def sample(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    """One sample line: ``name{a="x",b="y"} value``."""
    pairs = ",".join(f'{key}="{escape(val)}"' for key, val in labels)
    return f"{name}{{{pairs}}} {format_value(value)}" if pairs else f"{name} {format_value(value)}"


@dataclass(eq=False)
class Histogram:
    """Observations counted into fixed upper bounds (``le``), plus their sum and count."""

    bounds: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        """Count one observation."""
        index = bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Sequence[tuple[str, str]]) -> list[str]:
        """The ``_bucket`` (cumulative), ``_sum`` and ``_count`` samples."""
        out: list[str] = []
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            out.append(sample(f"{name}_bucket", [*labels, ("le", format_value(bound))], cumulative))
        out.append(sample(f"{name}_bucket", [*labels, ("le", "+Inf")], self.count))
        out.append(sample(f"{name}_sum", labels, self.total))
        out.append(sample(f"{name}_count", labels, self.count))
        return out
