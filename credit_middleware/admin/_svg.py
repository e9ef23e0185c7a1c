"""Small dependency-free SVG bar charts, rendered on the server (no script, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "Bar", "hbars", "vbars"]

PALETTE = ("#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2")

#: (value to scale by, text shown, colour)
Bar = tuple[float, str, str]


def hbars(
    rows: Sequence[tuple[str, Sequence[Bar]]], *, width: int = 560, label_w: int = 130
) -> str:
    """Horizontal bars, one group per row (several bars per group for comparisons)."""
    if not rows:
        return '<p class="empty">No data in this period.</p>'
    top = max((b[0] for _, bars in rows for b in bars), default=0) or 1
    bar_h, gap = 16, 10
    per_row = max(len(bars) for _, bars in rows)
    row_h = per_row * (bar_h + 2) + gap
    height = row_h * len(rows) + gap
    span = width - label_w - 140  # room for the value text after the longest bar
    out = [
        f'<svg class="chart" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, bars) in enumerate(rows):
        y0 = gap + i * row_h
        out.append(
            f'<text x="{label_w - 8}" y="{y0 + bar_h - 3}" text-anchor="end"'
            f' font-size="13">{escape(label)}</text>'
        )
        for j, (value, text, colour) in enumerate(bars):
            y = y0 + j * (bar_h + 2)
            w = max(1.0, span * max(0.0, value) / top)
            out.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}"'
                f' fill="{colour}" rx="2"/>'
            )
            out.append(
                f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 3}"'
                f' font-size="12">{escape(text)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def vbars(
    rows: Sequence[tuple[str, float, str]],
    *,
    width: int = 560,
    height: int = 220,
    colour: str = PALETTE[0],
) -> str:
    """Vertical bars over time (one per day), with the first and last day labelled."""
    if not rows:
        return '<p class="empty">No data in this period.</p>'
    top = max(v for _, v, _ in rows) or 1
    pad_l, pad_b, pad_t = 10, 24, 18
    slot = (width - 2 * pad_l) / len(rows)
    bar_w = min(48.0, max(2.0, slot * 0.8))
    plot_h = height - pad_b - pad_t
    out = [
        f'<svg class="chart" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_l}" y2="{height - pad_b}"'
        ' stroke="#94a3b8"/>',
    ]
    for i, (label, value, text) in enumerate(rows):
        h = max(1.0, plot_h * max(0.0, value) / top)
        x = pad_l + i * slot + (slot - bar_w) / 2
        y = height - pad_b - h
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}"'
            f' fill="{colour}"><title>{escape(label)}: {escape(text)}</title></rect>'
        )
        if len(rows) <= 14 or i in (0, len(rows) - 1):
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 8}" text-anchor="middle"'
                f' font-size="10">{escape(label[5:])}</text>'
            )
    out.append(
        f'<text x="{width - pad_l}" y="12" text-anchor="end" font-size="11">'
        f"max {escape(max(rows, key=lambda r: r[1])[2])}</text>"
    )
    out.append("</svg>")
    return "".join(out)
