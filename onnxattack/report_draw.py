"""Pictures for the HTML report, made to be inlined: PNGs as data: URIs (Pillow) and SVG elements.

Nothing here reaches outside the page: no fonts, no files, no links. Text that goes into an SVG is
escaped here; callers pass plain strings.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape

import numpy as np
from PIL import Image

from .report import as_image

_SIDE = 144  # pixels: small inputs (8x8 digits) are enlarged, nearest neighbour, to about this size
_MAX_BARS = 400  # a longer vector is drawn in bins (each the largest change in it)
POSITIVE, NEGATIVE, CLEAN, ADVERSARIAL = "#b2182b", "#2166ac", "#7f8c9d", "#d9622b"


def png_uri(pixels: np.ndarray) -> str:
    """An HxW or HxWx3 uint8 image as a data: URI, enlarged when small."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    height, width = pixels.shape[:2]
    scale = max(1, math.ceil(_SIDE / max(height, width, 1)))
    if scale > 1:
        image = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _diverging(delta: np.ndarray, scale: float) -> np.ndarray:
    """A one-channel change as RGB: white at 0, red up, blue down."""
    t = np.clip(delta / scale, -1.0, 1.0)
    fade = 1.0 - np.abs(t)
    red = np.where(t >= 0, 1.0, fade)
    blue = np.where(t <= 0, 1.0, fade)
    return np.rint(np.stack([red, fade, blue], axis=-1) * 255).astype(np.uint8)


def image_panels(x: np.ndarray, x_adv: np.ndarray) -> list[tuple[str, str]] | None:
    """(caption, data URI) for the clean input, the adversarial one and the perturbation; None when the
    sample is not image-shaped. Both inputs share one grey scale; the perturbation has its own."""
    clean = as_image(np.nan_to_num(x.astype(np.float64)))
    adversarial = as_image(np.nan_to_num(x_adv.astype(np.float64)))
    if clean is None or adversarial is None or clean.shape != adversarial.shape:
        return None
    low, high = float(min(clean.min(), adversarial.min())), float(max(clean.max(), adversarial.max()))
    span = (high - low) or 1.0

    def grey(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((values - low) / span * 255), 0, 255).astype(np.uint8)

    delta = adversarial - clean
    scale = float(np.abs(delta).max()) or 1.0
    if delta.ndim == 2:
        change, caption = _diverging(delta, scale), f"perturbation (\u00b1{scale:.3g}: red up, blue down)"
    else:
        change = np.clip(np.rint((0.5 + delta / (2 * scale)) * 255), 0, 255).astype(np.uint8)
        caption = f"perturbation (\u00d7{0.5 / scale:.3g} around grey)"
    return [(f"clean [{low:.3g}, {high:.3g}]", png_uri(grey(clean))), ("adversarial", png_uri(grey(adversarial))),
            (caption, png_uri(change))]


def _binned(values: np.ndarray) -> np.ndarray:
    """At most _MAX_BARS values: each bin keeps its largest change, with its sign."""
    if values.size <= _MAX_BARS:
        return values
    bins = np.array_split(values, _MAX_BARS)
    return np.array([chunk[np.argmax(np.abs(chunk))] for chunk in bins])


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 11) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="#333">{escape(text)}</text>')


def vector_plot(x: np.ndarray, x_adv: np.ndarray, width: int = 640) -> str:
    """A flat input: clean and adversarial values per feature (lines), and the change per feature (bars)."""
    clean = np.nan_to_num(x.astype(np.float64).ravel())
    adversarial = np.nan_to_num(x_adv.astype(np.float64).ravel())
    delta = _binned(adversarial - clean)
    left, plot_w, top, band = 48, width - 60, 18, 80
    height = top + 2 * band + 44
    body = [_text(left, 12, f"values per feature ({clean.size}): clean grey, adversarial orange")]
    low, high = float(min(clean.min(), adversarial.min())), float(max(clean.max(), adversarial.max()))
    span = (high - low) or 1.0
    for values, colour in ((clean, CLEAN), (adversarial, ADVERSARIAL)):
        shown = values[np.linspace(0, values.size - 1, min(values.size, _MAX_BARS)).astype(int)]
        step = plot_w / max(shown.size - 1, 1)
        points = " ".join(f"{left + i * step:.1f},{top + band - (v - low) / span * band:.1f}"
                          for i, v in enumerate(shown))
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{points}"/>')
    body += [_text(left - 4, top + 8, f"{high:.3g}", "end", 9), _text(left - 4, top + band, f"{low:.3g}", "end", 9)]
    scale = float(np.abs(delta).max()) or 1.0
    zero = top + band + 20 + band / 2
    bar = plot_w / delta.size
    body.append(_text(left, top + band + 16, "change per feature" + (" (binned: largest in each bin)"
                                                                     if clean.size > _MAX_BARS else "")))
    for i, value in enumerate(delta):
        length = abs(value) / scale * band / 2
        if length > 0:
            colour = POSITIVE if value > 0 else NEGATIVE
            y = zero - length if value > 0 else zero
            body.append(f'<rect x="{left + i * bar:.1f}" y="{y:.1f}" width="{max(bar * 0.8, 0.6):.1f}" '
                        f'height="{length:.1f}" fill="{colour}"/>')
    body += [f'<line x1="{left}" y1="{zero:.1f}" x2="{left + plot_w}" y2="{zero:.1f}" stroke="#333" '
             f'stroke-width="0.6"/>', _text(left - 4, zero - band / 2 + 8, f"+{scale:.3g}", "end", 9),
             _text(left - 4, zero + band / 2, f"-{scale:.3g}", "end", 9)]
    return _svg(width, height, body, "clean and adversarial values and the change per feature")


def histogram(values: np.ndarray, label: str, width: int = 420, height: int = 180) -> str:
    """Counts of `values` in up to 20 bins, with the axis range written under it."""
    values = values[np.isfinite(values)]
    left, bottom, plot_w, plot_h = 36, height - 34, width - 50, height - 60
    body = [_text(left, 14, f"{label}: {values.size} value(s)")]
    if values.size:
        low, high = float(values.min()), float(values.max())
        counts, _ = np.histogram(values, bins=min(20, max(5, values.size // 2)),
                                 range=(low, high if high > low else low + 1.0))
        bar = plot_w / len(counts)
        tallest = max(int(counts.max()), 1)
        for i, count in enumerate(counts):
            h = count / tallest * plot_h
            body.append(f'<rect x="{left + i * bar:.1f}" y="{bottom - h:.1f}" width="{bar * 0.9:.1f}" '
                        f'height="{h:.1f}" fill="{ADVERSARIAL}"><title>{int(count)}</title></rect>')
        body += [_text(left, bottom + 14, f"{low:.3g}", "start", 10),
                 _text(left + plot_w, bottom + 14, f"{high:.3g}", "end", 10),
                 _text(left - 4, bottom - plot_h + 8, str(tallest), "end", 10)]
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    return _svg(width, height, body, label)
