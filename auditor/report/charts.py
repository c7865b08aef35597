"""Inline SVG charts. Every piece of text is escaped; numbers are formatted here, never taken as markup."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 460, 220, 40
COLOURS = ("#1f6feb", "#d1242f", "#8250df", "#1a7f37")


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]
    colour: str = COLOURS[0]


def _open_svg(width: float, height: float, title: str) -> str:
    """An svg element that scales down on narrow screens but never grows past its natural size."""
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" style="max-width:{width * 1.25:.0f}px" '
            f'role="img" aria-label="{escape(title)}">')


def _scale(lo: float, hi: float, size: float, flip: bool) -> Callable[[float], float]:
    span = (hi - lo) or 1.0

    def f(v: float) -> float:
        x = (v - lo) / span * size
        return PAD + (size - x if flip else x)
    return f


def line_chart(title: str, series: Sequence[Series], *, band: Sequence[tuple[float, float]] | None = None,
               band_label: str = "noise floor", y_label: str = "", reference: float | None = None,
               x_label: str = "layer") -> Markup:
    """A line chart over layers (or checkpoints); `band` is a shaded (low, high) region per point, named
    `band_label` on hover."""
    points = [v for s in series for v in s.values] + [v for b in band or [] for v in b]
    if reference is not None:
        points.append(reference)
    lo, hi = min(points, default=0.0), max(points, default=1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    n = max((len(s.values) for s in series), default=1)
    x = _scale(0, max(n - 1, 1), WIDTH - 2 * PAD, False)
    y = _scale(lo, hi, HEIGHT - 2 * PAD, True)
    parts = [_open_svg(WIDTH, HEIGHT, title),
             f'<text x="{PAD}" y="16" class="title">{escape(title)}</text>']
    if band:
        upper = " ".join(f"{x(i):.1f},{y(b[1]):.1f}" for i, b in enumerate(band))
        lower = " ".join(f"{x(i):.1f},{y(b[0]):.1f}" for i, b in reversed(list(enumerate(band))))
        parts.append(f'<polygon points="{upper} {lower}" class="band"><title>{escape(band_label)}</title></polygon>')
    if reference is not None:
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(reference):.1f}" y2="{y(reference):.1f}" '
                     'class="ref"/>')
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{PAD - 4}" y="{y(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:.2f}</text>')
    for i in sorted({0, (n - 1) // 2, n - 1}):
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" class="tick" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="10" y="{HEIGHT / 2}" class="tick" transform="rotate(-90 10 {HEIGHT / 2})" '
                     f'text-anchor="middle">{escape(y_label)}</text>')
    for k, s in enumerate(series):
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - PAD}" y="{16 + 14 * k}" class="legend" fill="{s.colour}" '
                     f'text-anchor="end">{escape(s.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def heatmap(title: str, rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]]) -> Markup:
    """Rates in [0, 1] as a grid of shaded cells with the value written in each."""
    cell_w, cell_h, left, top = 90, 20, 170, 40
    width, height = left + cell_w * len(columns) + 10, top + cell_h * len(rows) + 10
    parts = [_open_svg(width, height, title),
             f'<text x="4" y="16" class="title">{escape(title)}</text>']
    for j, column in enumerate(columns):
        parts.append(f'<text x="{left + cell_w * j + cell_w / 2}" y="{top - 6}" class="tick" '
                     f'text-anchor="middle">{escape(column)}</text>')
    for i, row in enumerate(rows):
        yy = top + cell_h * i
        parts.append(f'<text x="{left - 6}" y="{yy + 14}" class="tick" text-anchor="end">{escape(row)}</text>')
        for j, value in enumerate(values[i]):
            shade = max(0.0, min(1.0, value))
            colour = f"rgb({255:d},{int(255 - 180 * shade):d},{int(255 - 200 * shade):d})"
            parts.append(f'<rect x="{left + cell_w * j}" y="{yy}" width="{cell_w - 2}" height="{cell_h - 2}" '
                         f'fill="{colour}"/><text x="{left + cell_w * j + cell_w / 2}" y="{yy + 14}" '
                         f'class="tick" text-anchor="middle">{value:.0%}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def rate_curve(title: str, xs: Sequence[float], rates: Sequence[float], cis: Sequence[Sequence[float]],
               x_label: str) -> Markup:
    """Refusal rate against steering strength, with interval whiskers."""
    x = _scale(min(xs, default=0.0), max(xs, default=1.0), WIDTH - 2 * PAD, False)
    y = _scale(0.0, 1.0, HEIGHT - 2 * PAD, True)
    parts = [_open_svg(WIDTH, HEIGHT, title),
             f'<text x="{PAD}" y="16" class="title">{escape(title)}</text>']
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{PAD - 4}" y="{y(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:.0%}</text>')
    for v in xs:
        parts.append(f'<text x="{x(v):.1f}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="middle">{v:g}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" class="tick" text-anchor="middle">{escape(x_label)}</text>')
    path = " ".join(f"{x(v):.1f},{y(r):.1f}" for v, r in zip(xs, rates, strict=True))
    parts.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[1]}" stroke-width="2"/>')
    for v, r, ci in zip(xs, rates, cis, strict=True):
        parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{y(ci[0]):.1f}" y2="{y(ci[1]):.1f}" '
                     f'stroke="{COLOURS[1]}"/><circle cx="{x(v):.1f}" cy="{y(r):.1f}" r="3" fill="{COLOURS[1]}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
