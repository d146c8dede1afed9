"""Charts as server-rendered SVG: a line chart and a horizontal bar, no JavaScript.

Each chart carries ``role="img"`` and a ``<title>`` naming what it shows and its
extremes, so a screen reader gets the figure a sighted reader sees. Values are
escaped; the markup is safe to insert with Jinja's ``|safe``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

HEALTH_COLOURS = {
    "healthy": "#1a7f37",
    "degraded": "#9a6700",
    "critical": "#b3261e",
    "unknown": "#57606a",
}


@dataclass(frozen=True)
class Point:
    label: str  # shown on the x axis (first and last) and in the title of the peak
    value: float | None


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}"


def line_chart(
    title: str,
    points: Sequence[Point],
    *,
    unit: str = "",
    width: int = 560,
    height: int = 160,
) -> Markup:
    """A line over ``points`` (None: a gap), with its peak marked and named."""
    values = [p.value for p in points if p.value is not None]
    label = escape(title)
    if not values:
        return Markup(
            f'<svg class="chart" role="img" viewBox="0 0 {width} 40" width="{width}" height="40">'
            f"<title>{label}: no data yet</title>"
            f'<text x="4" y="24" fill="#4a5360">{label}: no data yet</text></svg>'
        )
    pad_l, pad_r, pad_t, pad_b = 48, 8, 18, 22
    lo, hi = min(0.0, min(values)), max(values)
    span = (hi - lo) or 1.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = len(points)

    def x(i: int) -> float:
        return pad_l + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y(v: float) -> float:
        return pad_t + inner_h * (1 - (v - lo) / span)

    segments: list[list[str]] = [[]]
    for i, p in enumerate(points):
        if p.value is None:
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(f"{x(i):.1f},{y(p.value):.1f}")
    paths = "".join(
        f'<polyline fill="none" stroke="#0b5cad" stroke-width="2" points="{" ".join(s)}"/>'
        if len(s) > 1
        else f'<circle r="2.5" fill="#0b5cad" cx="{s[0].split(",")[0]}" cy="{s[0].split(",")[1]}"/>'
        for s in segments
        if s
    )
    peak_i = max(
        (i for i, p in enumerate(points) if p.value is not None),
        key=lambda i: points[i].value or 0.0,
    )
    peak = points[peak_i]
    peak_v = peak.value or 0.0
    u = escape(unit)
    summary = (
        f"{label}: {len(values)} points, peak {_fmt(peak_v)}{u} at {escape(peak.label)}, "
        f"last {_fmt(values[-1])}{u}"
    )
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}"><title>{summary}</title>'
        f'<line x1="{pad_l}" y1="{pad_t + inner_h}" x2="{width - pad_r}" y2="{pad_t + inner_h}" '
        f'stroke="#c9d0d8"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end" font-size="11" '
        f'fill="#4a5360">{_fmt(hi)}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + inner_h}" text-anchor="end" font-size="11" '
        f'fill="#4a5360">{_fmt(lo)}</text>'
        f'<text x="{pad_l}" y="{height - 6}" font-size="11" fill="#4a5360">'
        f"{escape(points[0].label)}</text>"
        f'<text x="{width - pad_r}" y="{height - 6}" text-anchor="end" font-size="11" '
        f'fill="#4a5360">{escape(points[-1].label)}</text>'
        f"{paths}"
        f'<circle r="4" fill="none" stroke="#b3261e" stroke-width="2" cx="{x(peak_i):.1f}" '
        f'cy="{y(peak_v):.1f}"/>'
        f'<text x="{min(x(peak_i), width - 120):.1f}" y="{max(y(peak_v) - 6, 11):.1f}" '
        f'font-size="11" fill="#1b1f24">peak {_fmt(peak_v)}{u}</text>'
        "</svg>"
    )


def health_bar(counts: dict[str, int], *, width: int = 560, height: int = 28) -> Markup:
    """One stacked bar: agents by health class, each part's share of the width."""
    total = sum(counts.get(k, 0) for k in HEALTH_COLOURS)
    parts = ", ".join(f"{counts.get(k, 0):,} {k}" for k in HEALTH_COLOURS)
    title = f"Agents by health: {parts}" if total else "Agents by health: none yet"
    rects = []
    x = 0.0
    for name, colour in HEALTH_COLOURS.items():
        n = counts.get(name, 0)
        if not total or not n:
            continue
        w = width * n / total
        rects.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height}" fill="{colour}">'
            f"<title>{n:,} {name}</title></rect>"
        )
        x += w
    if not rects:
        rects.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eef1f4"/>')
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}"><title>{escape(title)}</title>{"".join(rects)}</svg>'
    )


def bars(
    title: str, rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 560
) -> Markup:
    """Horizontal bars, one per (label, value), longest first as given."""
    if not rows:
        return Markup(f'<p class="muted">{escape(title)}: nothing yet</p>')
    row_h, label_w = 22, 160
    height = row_h * len(rows) + 4
    top = max(v for _, v in rows) or 1.0
    items = []
    for i, (name, value) in enumerate(rows):
        w = (width - label_w - 80) * max(value, 0) / top
        yy = i * row_h + 2
        items.append(
            f'<text x="{label_w - 6}" y="{yy + 15}" text-anchor="end" font-size="12" '
            f'fill="#1b1f24">{escape(name[:24])}</text>'
            f'<rect x="{label_w}" y="{yy + 3}" width="{w:.1f}" height="{row_h - 6}" '
            'fill="#0b5cad"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{yy + 15}" font-size="12" fill="#1b1f24">'
            f"{_fmt(value)}{escape(unit)}</text>"
        )
    summary = "; ".join(f"{n} {_fmt(v)}{unit}" for n, v in rows)
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}"><title>{escape(title)}: {escape(summary)}</title>{"".join(items)}</svg>'
    )
