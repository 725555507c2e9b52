"""The overlay PNGs of ``bench predict --overlay``: class contours (optionally filled) on the image, and with
``--reference`` the reference mask beside the prediction, captioned, with a legend of the classes.

Contours are drawn inside each class, thick enough to see on a full-size CT slice (4 px at 512 x 512,
never under 2), in saturated light colours that stand out on gray (the dark tab10 blue of class 1
disappeared on soft tissue).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# colours of classes 1, 2, ...: saturated and light, each distinct on gray CT and on the others
PALETTE = [(255, 59, 48), (0, 200, 255), (52, 230, 90), (255, 214, 0), (255, 80, 220), (255, 149, 0),
           (0, 255, 200), (175, 130, 255), (200, 255, 80)]
FILL_ALPHA = 0.35  # --fill: the class colour over the image inside each class, the image still visible
GAP = 8  # pixels between the panels of a side-by-side overlay


def colour(k: int) -> tuple[int, int, int]:
    """The colour of class ``k`` (>= 1), cycling through the palette."""
    return PALETTE[(int(k) - 1) % len(PALETTE)]


def contour_width(shape: tuple[int, ...]) -> int:
    """Contour thickness in pixels: one per 128 pixels of the shorter side, at least 2."""
    return max(2, round(min(shape[:2]) / 128))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An H x W (gray) or H x W x 3 image, min-max scaled to uint8 RGB."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    lo, hi = float(rgb.min()), float(rgb.max())
    return (255 * (rgb - lo) / (hi - lo if hi > lo else 1.0)).astype(np.uint8)


def overlay(image: np.ndarray, label: np.ndarray, fill: bool = False) -> np.ndarray:
    """The image (H x W or H x W x 3) as RGB uint8, each class's contour in its colour (inside the class,
    ``contour_width`` wide) and, with ``fill``, the class translucent in that colour."""
    out = to_rgb(image)
    width = contour_width(label.shape)
    for k in np.unique(label):
        if k == 0:
            continue
        mask = label == k
        if fill:
            out[mask] = ((1 - FILL_ALPHA) * out[mask] + FILL_ALPHA * np.array(colour(k))).astype(np.uint8)
        inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
        out[mask & ~inner] = colour(k)
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _legend(present: list[int], names: dict[int, str], font, size: int, width: int) -> list[tuple[int, str, int, int]]:
    """(class, name, x, y) of each legend entry, wrapped to ``width``."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y = [], 4, 0
    for k in present:
        text = names.get(k, f"class {k}")
        step = size + 6 + int(measure.textlength(text, font=font)) + 2 * size
        if x + step > width and x > 4:
            x, y = 4, y + size + 8
        items.append((k, text, x, y))
        x += step
    return items


def side_by_side(image: np.ndarray, label: np.ndarray, reference: np.ndarray, names: dict[int, str],
                 fill: bool = False) -> np.ndarray:
    """Reference (left) and prediction (right) overlays of one image, captioned, with a legend of the classes
    present in either mask (their names in their colours)."""
    h, w = label.shape[:2]
    size = max(11, min(h, w) // 32)
    font, band, width = _font(size), size + 8, 2 * w + GAP
    present = sorted(int(k) for k in set(np.unique(label)) | set(np.unique(reference)) if k)
    legend = _legend(present, names, font, size, width)
    legend_h = legend[-1][3] + band + 4 if legend else 0
    canvas = Image.new("RGB", (width, band + h + legend_h), (24, 24, 24))
    canvas.paste(Image.fromarray(overlay(image, reference, fill)), (0, band))
    canvas.paste(Image.fromarray(overlay(image, label, fill)), (w + GAP, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "reference", fill=(235, 235, 235), font=font)
    draw.text((w + GAP + 4, 4), "prediction", fill=(235, 235, 235), font=font)
    top = band + h + 4
    for k, text, x, y in legend:
        draw.rectangle((x, top + y + 2, x + size, top + y + 2 + size), fill=colour(k))
        draw.text((x + size + 6, top + y), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)
