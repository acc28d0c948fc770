"""Small, dependency-free SVG charts for the HTML reports (:mod:`genoray.evaluation.html`):
a heat map with counts (confusion matrix), line charts (reliability diagram, precision-recall
curves), overlaid histograms (score distributions), a scatter plot (embedding map) and
horizontal bars (study results). Each function returns one ``<svg>`` element as text; every
label is escaped, and the charts draw without script or external resources (inline in HTML,
or a file on its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H = 460, 300  # chart size (px)
L, R, T, B = 52, 12, 30, 44  # margins: left (y ticks), right, top (title), bottom (x ticks + label)
PALETTE = ("#2f6fde", "#e07b24", "#1e9e6a", "#c2334d", "#7a4fc9", "#8a6d3b", "#d04ea0", "#5a6b7b")


def _num(v: float) -> str:
    return f"{v:.3g}"


def _frame(title: str, body: list[str], width: int = W, height: int = H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif" font-size="11" role="img" aria-label="{escape(title)}">'
            f'<rect width="{width}" height="{height}" fill="#fff"/>'
            f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


class _Axes:
    """Maps data coordinates to the plot area and draws the axes with ticks."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float], width: int = W, height: int = H):
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        self.width, self.height = width, height
        self.x1 = self.x1 if self.x1 > self.x0 else self.x0 + 1
        self.y1 = self.y1 if self.y1 > self.y0 else self.y0 + 1

    def px(self, x: float) -> float:
        """Pixel x of data x."""
        return L + (x - self.x0) / (self.x1 - self.x0) * (self.width - L - R)

    def py(self, y: float) -> float:
        """Pixel y of data y."""
        return self.height - B - (y - self.y0) / (self.y1 - self.y0) * (self.height - T - B)

    def draw(self, xlabel: str, ylabel: str, ticks: int = 5) -> list[str]:
        """Axes lines, ticks and labels."""
        out = [f'<rect x="{L}" y="{T}" width="{self.width - L - R}" height="{self.height - T - B}" fill="none" '
               'stroke="#999"/>']
        for i in range(ticks + 1):
            xv = self.x0 + (self.x1 - self.x0) * i / ticks
            yv = self.y0 + (self.y1 - self.y0) * i / ticks
            out.append(f'<text x="{self.px(xv):.1f}" y="{self.height - B + 14}" text-anchor="middle">{_num(xv)}</text>')
            out.append(f'<text x="{L - 4}" y="{self.py(yv) + 4:.1f}" text-anchor="end">{_num(yv)}</text>')
            out.append(f'<line x1="{L}" x2="{self.width - R}" y1="{self.py(yv):.1f}" y2="{self.py(yv):.1f}" '
                       'stroke="#eee"/>')
        out.append(f'<text x="{(L + self.width - R) / 2}" y="{self.height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text transform="translate(13 {(T + self.height - B) / 2}) rotate(-90)" text-anchor="middle">'
                   f'{escape(ylabel)}</text>')
        return out


def _legend(names: Sequence[str], width: int = W) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = T + 8 + 14 * i
        out.append(f'<rect x="{width - R - 150}" y="{y - 8}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{width - R - 136}" y="{y + 1}" paint-order="stroke" stroke="#fff" stroke-width="3">'
                   f'{escape(name)}</text>')
    return out


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], title: str,
            xlabel: str = "predicted", ylabel: str = "true") -> str:
    """A matrix as shaded cells with their values written in (a confusion matrix)."""
    n, m = len(rows), len(cols)
    cell = max(18, min(60, 300 // max(n, m, 1)))
    left, top = 20 + 7 * max((len(r) for r in rows), default=1), T + 34
    width, height = max(W, left + cell * m + 20), top + cell * n + 24
    peak = max((v for row in matrix for v in row), default=0) or 1
    body = [f'<text x="{left + cell * m / 2}" y="{T + 10}" text-anchor="middle">{escape(xlabel)}</text>']
    for j, c in enumerate(cols):
        body.append(f'<text x="{left + cell * (j + 0.5)}" y="{top - 6}" text-anchor="middle">{escape(c)}</text>')
    for i, r in enumerate(rows):
        body.append(f'<text x="{left - 6}" y="{top + cell * (i + 0.5) + 4}" text-anchor="end">{escape(r)}</text>')
        for j in range(m):
            v = matrix[i][j]
            shade = v / peak
            fill = f"rgb({int(255 - 208 * shade)},{int(255 - 144 * shade)},{int(255 - 33 * shade)})"
            ink = "#fff" if shade > 0.55 else "#000"
            body.append(f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" fill="{fill}" '
                        f'stroke="#fff"/><text x="{left + cell * (j + 0.5)}" y="{top + cell * (i + 0.5) + 4}" '
                        f'text-anchor="middle" fill="{ink}" class="cell">{_num(v)}</text>')
    body.append(f'<text x="10" y="{top + cell * n / 2}" transform="rotate(-90 10 {top + cell * n / 2})" '
                f'text-anchor="middle">{escape(ylabel)}</text>')
    return _frame(title, body, width, height)


def lines(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
          xlim: tuple[float, float] = (0.0, 1.0), ylim: tuple[float, float] = (0.0, 1.0), diagonal: bool = False,
          markers: bool = False) -> str:
    """Line charts ``(name, xs, ys)`` on shared axes; ``diagonal``: the y = x reference line."""
    ax = _Axes(xlim, ylim)
    body = ax.draw(xlabel, ylabel)
    if diagonal:
        body.append(f'<line x1="{ax.px(xlim[0]):.1f}" y1="{ax.py(ylim[0]):.1f}" x2="{ax.px(xlim[1]):.1f}" '
                    f'y2="{ax.py(ylim[1]):.1f}" stroke="#aaa" stroke-dasharray="4 3"/>')
    for i, (_, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{ax.px(x):.1f},{ax.py(y):.1f}" for x, y in zip(xs, ys))
        if pts:
            body.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if markers:
            body += [f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="2.6" fill="{color}"/>' for x, y in zip(xs, ys)]
    return _frame(title, body + _legend([s[0] for s in series]))


def histograms(series: Sequence[tuple[str, Sequence[float]]], edges: Sequence[float], title: str, xlabel: str,
               ylabel: str = "share of rows") -> str:
    """Overlaid step histograms: ``(name, counts)`` over shared bin ``edges``, each normalised to
    shares so groups of different sizes compare."""
    shares = [[c / (sum(counts) or 1) for c in counts] for _, counts in series]
    ax = _Axes((edges[0], edges[-1]), (0.0, max((max(s, default=0) for s in shares), default=0) * 1.1 or 1.0))
    body = ax.draw(xlabel, ylabel)
    for i, s in enumerate(shares):
        color = PALETTE[i % len(PALETTE)]
        pts = [f"{ax.px(edges[0]):.1f},{ax.py(0):.1f}"]
        for j, v in enumerate(s):
            pts += [f"{ax.px(edges[j]):.1f},{ax.py(v):.1f}", f"{ax.px(edges[j + 1]):.1f},{ax.py(v):.1f}"]
        pts.append(f"{ax.px(edges[-1]):.1f},{ax.py(0):.1f}")
        body.append(f'<polyline points="{" ".join(pts)}" fill="{color}" fill-opacity="0.18" stroke="{color}" '
                    'stroke-width="1.5"/>')
    return _frame(title, body + _legend([s[0] for s in series]))


def scatter(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
            ylabel: str) -> str:
    """Points ``(name, xs, ys)`` in one colour per series (an embedding map)."""
    xs = [x for _, sx, _ in series for x in sx] or [0.0, 1.0]
    ys = [y for _, _, sy in series for y in sy] or [0.0, 1.0]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.05 or 1.0, (max(ys) - min(ys)) * 0.05 or 1.0
    ax = _Axes((min(xs) - pad_x, max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y))
    body = ax.draw(xlabel, ylabel)
    for i, (_, sx, sy) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        body += [f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="2" fill="{color}" fill-opacity="0.55"/>'
                 for x, y in zip(sx, sy)]
    return _frame(title, body + _legend([f"{s[0]} ({len(s[1])})" for s in series]))


def bars(items: Sequence[tuple[str, float, float | None, float | None]], title: str, xlabel: str,
         xlim: tuple[float, float] = (0.0, 1.0)) -> str:
    """Horizontal bars ``(name, value, low, high)`` with an interval whisker where ``low``/``high``
    are given (a study's accuracy per cell with its bootstrap 95% CI)."""
    names_w = 8 + 6 * max((len(n) for n, *_ in items), default=4)
    left, row = max(L, min(names_w, 260)), 16
    width, height = W + left - L + 120, T + 12 + row * len(items) + B
    span = (xlim[1] - xlim[0]) or 1.0
    px = lambda v: left + (min(max(v, xlim[0]), xlim[1]) - xlim[0]) / span * (width - left - R)
    body = [f'<text x="{(left + width - R) / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>']
    for i in range(6):
        v = xlim[0] + span * i / 5
        body.append(f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{T + 4}" y2="{height - B + 2}" stroke="#eee"/>'
                    f'<text x="{px(v):.1f}" y="{height - B + 14}" text-anchor="middle">{_num(v)}</text>')
    for i, (name, value, low, high) in enumerate(items):
        y = T + 10 + row * i
        body.append(f'<text x="{left - 4}" y="{y + 10}" text-anchor="end">{escape(name)}</text>')
        if value is None or value != value:
            body.append(f'<text x="{left + 4}" y="{y + 10}">n/a</text>')
            continue
        body.append(f'<rect x="{left}" y="{y + 2}" width="{px(value) - left:.1f}" height="{row - 5}" '
                    f'fill="{PALETTE[0]}"/><text x="{px(value) + 4:.1f}" y="{y + 10}" font-size="10">{value:.3f}</text>')
        if low is not None and high is not None:
            body.append(f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y + row / 2:.1f}" y2="{y + row / 2:.1f}" '
                        'stroke="#222"/>')
    return _frame(title, body, width, height)
