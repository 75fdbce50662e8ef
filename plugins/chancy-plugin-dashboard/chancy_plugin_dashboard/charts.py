"""Small inline SVG line charts of the metrics plugin's history (no JavaScript).

Colours come from the stylesheet (classes ``series-0``...), so the charts obey the
dashboard's Content-Security-Policy (no inline styles).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

__all__ = ["failure_rate_chart", "line_chart", "outcome_chart", "timing_chart"]

Series = Sequence[tuple[datetime, float]]

_WIDTH, _HEIGHT = 640, 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 24, 28
_OUTCOME_COLOURS = {"succeeded": 0, "failed": 1, "pending": 2, "retrying": 3}


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"


def line_chart(
    series: Mapping[str, Series],
    *,
    title: str,
    unit: str = "",
    colours: Mapping[str, int] | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> Markup:
    """An SVG chart of one line per series (``name -> [(time, value), ...]``).

    ``colours`` picks a series' colour (``0``-``5``, the stylesheet's ``series-N``);
    by default series are coloured in order. ``window`` is the time axis's range
    (default: from the first point to the last).
    """
    points = [p for values in series.values() for p in values]
    label = escape(title)
    if not points:
        return Markup(
            '<figure class="chart"><figcaption>{}</figcaption><p class="muted">No data in'
            " this window yet.</p></figure>"
        ).format(label)
    first = min(t for t, _ in points).astimezone(UTC)
    last = max(t for t, _ in points).astimezone(UTC)
    if window is not None:
        first, last = min(first, window[0].astimezone(UTC)), max(last, window[1].astimezone(UTC))
    start, end = first.timestamp(), last.timestamp()
    span = max(end - start, 60.0)
    top = max(max(v for _, v in points), 1e-9)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM

    def x(t: datetime) -> float:
        return _LEFT + (t.timestamp() - start) / span * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - v / top * plot_h

    parts = [
        Markup(
            '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{label}"'
            ' xmlns="http://www.w3.org/2000/svg">'
        ).format(w=_WIDTH, h=_HEIGHT, label=label),
        Markup('<text class="title" x="{}" y="14">{}</text>').format(_LEFT, label),
        Markup(
            '<line class="axis" x1="{l}" y1="{b}" x2="{r}" y2="{b}"/>'
            '<line class="axis" x1="{l}" y1="{t}" x2="{l}" y2="{b}"/>'
        ).format(l=_LEFT, r=_WIDTH - _RIGHT, t=_TOP, b=_TOP + plot_h),
        Markup('<text class="tick" x="{}" y="{}" text-anchor="end">{}{}</text>').format(
            _LEFT - 4, _TOP + 8, _number(top), escape(unit)
        ),
        Markup('<text class="tick" x="{}" y="{}" text-anchor="end">0</text>').format(
            _LEFT - 4, _TOP + plot_h
        ),
        Markup('<text class="tick" x="{}" y="{}">{}</text>').format(
            _LEFT, _HEIGHT - 8, first.strftime("%H:%M")
        ),
        Markup('<text class="tick" x="{}" y="{}" text-anchor="end">{} UTC</text>').format(
            _WIDTH - _RIGHT, _HEIGHT - 8, last.strftime("%H:%M")
        ),
    ]
    legend_x = _LEFT + 8 * len(title) + 24
    for n, (name, values) in enumerate(series.items()):
        i = (colours or {}).get(name, n)
        ordered = sorted(values)
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in ordered)
        if len(ordered) == 1:
            (t, v) = ordered[0]
            parts.append(
                Markup('<circle class="series-{}" cx="{:.1f}" cy="{:.1f}" r="3"/>').format(
                    i % 6, x(t), y(v)
                )
            )
        parts.append(
            Markup('<polyline class="series-{}" fill="none" points="{}"/>').format(i % 6, coords)
        )
        parts.append(
            Markup('<text class="legend series-{}" x="{}" y="14">{}</text>').format(
                i % 6, legend_x, escape(name)
            )
        )
        legend_x += 12 + 8 * len(name)
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _per_minute(
    rows: Iterable[Any], key: Any, value: Any
) -> dict[str, list[tuple[datetime, float]]]:
    sums: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        sums[key(row)][row.bucket] += value(row)
    return {name: sorted(points.items()) for name, points in sorted(sums.items())}


def outcome_chart(
    rows: Sequence[Any], *, title: str, window: tuple[datetime, datetime] | None = None
) -> Markup:
    """Attempts per minute, one line per outcome (``HistoryRow`` rows)."""
    return line_chart(
        _per_minute(rows, lambda r: r.outcome, lambda r: float(r.jobs)),
        title=title,
        colours=_OUTCOME_COLOURS,
        window=window,
    )


def failure_rate_chart(
    rows: Sequence[Any], *, title: str, window: tuple[datetime, datetime] | None = None
) -> Markup:
    """The share of attempts per minute that failed or will be retried, in percent."""
    total: dict[datetime, float] = defaultdict(float)
    failed: dict[datetime, float] = defaultdict(float)
    for row in rows:
        total[row.bucket] += row.jobs
        if row.outcome in ("failed", "retrying"):
            failed[row.bucket] += row.jobs
    points = [(t, 100.0 * failed[t] / n) for t, n in sorted(total.items()) if n]
    return line_chart(
        {"failed %": points} if points else {},
        title=title,
        unit="%",
        colours={"failed %": 1},
        window=window,
    )


def timing_chart(
    rows: Sequence[Any],
    kind: str,
    *,
    title: str,
    window: tuple[datetime, datetime] | None = None,
) -> Markup:
    """The mean ``run`` or ``wait`` time per minute, in seconds."""
    sums: dict[datetime, float] = defaultdict(float)
    counts: dict[datetime, int] = defaultdict(int)
    for row in rows:
        sums[row.bucket] += getattr(row, f"{kind}_seconds_sum")
        counts[row.bucket] += row.jobs
    points = [(t, sums[t] / counts[t]) for t in sorted(sums) if counts[t]]
    return line_chart({f"{kind} s": points} if points else {}, title=title, unit="s", window=window)
