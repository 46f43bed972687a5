"""Attention maps drawn over their image: what ``vqa predict --attention`` writes and the report embeds.

An attention map is float (H, W) weights over the cells of an image grid (``vqa.attention``,
summing to 1). ``overlay`` stretches one map to the image's pixels by bilinear interpolation
(cell centres at the centres of the image's H x W blocks, as the backbone's receptive fields
tile it), scales it by its own maximum, colours it (dark purple for none of the map's top
weight, pale yellow for all of it) and blends the colours over the image. ``render`` puts one
labelled panel per glimpse or hop side by side, with an optional title line above them
(``lay_out``, which ``vqa.box_drawing`` shares for maps over detector boxes).

Only Pillow and numpy: no plotting library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vqa.storage import atomic_path

ALPHA = 0.6  # share of the colour in a blended pixel
GAP = 4  # px between panels
LABEL_HEIGHT = 18  # px of the strip above the panels holding each panel's label (and of the title line)
BACKGROUND = (32, 32, 32)
TEXT = (240, 240, 240)
NO_IMAGE = (128, 128, 128)  # the canvas when the image itself cannot be shown
# The "inferno" colour map at 0, 1/4, 1/2, 3/4 and 1: its lightness rises steadily, so the
# brightest colour is the map's top weight and it reads the same in greyscale.
_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32)


def upsample(weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a map to ``size`` = (height, width) pixels.

    Args:
        weights: float (H, W).
        size: (height, width) of the image.

    Returns:
        float32 (height, width); equal to cell (i, j)'s weight at the centre of the
        image's block (i, j), constant beyond the outer cell centres.
    """
    weights = np.asarray(weights, np.float32)
    rows, columns = weights.shape
    height, width = size
    y0, y1, fy = _axis(rows, height)
    x0, x1, fx = _axis(columns, width)
    top = weights[y0][:, x0] * (1 - fx) + weights[y0][:, x1] * fx
    bottom = weights[y1][:, x0] * (1 - fx) + weights[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def _axis(cells: int, pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel along one axis: the cell before it, the cell after it, and how far between."""
    position = np.clip((np.arange(pixels, dtype=np.float64) + 0.5) * cells / pixels - 0.5, 0, cells - 1)
    before = np.floor(position).astype(int)
    after = np.minimum(before + 1, cells - 1)
    return before, after, (position - before).astype(np.float32)


def colour_map(values: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) colours of ``values`` in [0, 1] (clipped), darkest at 0, brightest at 1."""
    position = np.clip(np.asarray(values, np.float32), 0, 1) * (len(_ANCHORS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_ANCHORS) - 2)
    share = (position - low)[..., None]
    return np.rint(_ANCHORS[low] * (1 - share) + _ANCHORS[low + 1] * share).astype(np.uint8)


def overlay(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One map blended over its image.

    Args:
        image: uint8 (height, width, 3) RGB.
        weights: float (H, W), non-negative.

    Returns:
        uint8 (height, width, 3): ``(1 - ALPHA) * image + ALPHA * colour``, the colour of
        each pixel's upsampled weight divided by the map's maximum.
    """
    image = np.asarray(image, np.uint8)
    stretched = upsample(weights, image.shape[:2])
    top = float(np.max(weights)) if np.size(weights) else 0.0
    scaled = stretched / top if top > 0 else np.zeros_like(stretched)
    blended = (1 - ALPHA) * image.astype(np.float32) + ALPHA * colour_map(scaled).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def map_names(model_name: str, count: int) -> list[str]:
    """Panel names: "hop 1", "hop 2" for a stacked-attention (san) model, else "glimpse 1", ..."""
    kind = "hop" if model_name == "san" else "glimpse"
    return [f"{kind} {number}" for number in range(1, count + 1)]


def fit(image, longest: int | None, grow: bool = False):
    """A PIL image scaled down (bilinear, aspect kept) so its longest side is at most ``longest``
    (exactly ``longest`` with ``grow``, which also enlarges a smaller one)."""
    from PIL import Image

    if longest is None or max(image.size) == longest or (max(image.size) < longest and not grow):
        return image
    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def render(image, maps: np.ndarray, names: Sequence[str] | None = None, title: str | None = None,
           longest: int | None = None, grow: bool = False, font_size: int = 12):
    """The image once per map, each with its map overlaid, side by side under their labels.

    Args:
        image: the picture (a PIL image or uint8 (height, width, 3) RGB), or None to draw
            the maps on a grey canvas of the grid's proportions.
        maps: float (G, H, W), one map per glimpse or hop.
        names: G panel names (default "map 1", ...); each label adds the map's top weight.
        title: a line above the panels (e.g. the question and the answer), or None.
        longest: scale the picture down to at most this many pixels on its longest side.
        grow: scale a smaller picture up to ``longest`` too (so the labels keep their size beside it).
        font_size: of the labels and the title.

    Returns:
        PIL.Image.Image, RGB, ``G * width + (G - 1) * GAP`` wide and ``height + LABEL_HEIGHT``
        high (another ``LABEL_HEIGHT`` with a title), width and height those of the (scaled) picture.
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(f"expected attention maps (G, H, W), got shape {maps.shape}")
    picture = panel_picture(image, (maps.shape[2], maps.shape[1]), longest, grow)
    return lay_out([overlay(picture, weights) for weights in maps], panel_labels(names, maps), title, font_size)


def panel_picture(image, proportions: tuple[float, float], longest: int | None = None,
                  grow: bool = False) -> np.ndarray:
    """uint8 (height, width, 3): the picture every panel is drawn on, scaled as ``render`` says.

    Args:
        image: a PIL image, uint8 (height, width, 3) RGB, or None for a grey canvas.
        proportions: (width, height) the canvas takes the shape of (its longest side ``longest``, or 224 px).
        longest, grow: as ``render``.
    """
    from PIL import Image

    if image is None:
        side = longest or 224
        scale = side / max(proportions)
        size = (max(1, round(proportions[0] * scale)), max(1, round(proportions[1] * scale)))
        return np.asarray(Image.new("RGB", size, NO_IMAGE), np.uint8)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8), "RGB")
    return np.asarray(fit(image.convert("RGB"), longest, grow), np.uint8)


def panel_labels(names: Sequence[str] | None, maps: Sequence[np.ndarray]) -> list[str]:
    """Each panel's label: its name ("map N" by default) and its map's top weight."""
    names = list(names) if names is not None else [f"map {number}" for number in range(1, len(maps) + 1)]
    return [f"{name}: max {float(np.max(weights)):.2f}" for name, weights in zip(names, maps)]


def lay_out(panels: Sequence[np.ndarray], labels: Sequence[str], title: str | None = None, font_size: int = 12):
    """Panels (uint8 (height, width, 3), all one size) side by side, each under its label, under a title line.

    Returns:
        PIL.Image.Image, RGB, as ``render`` describes.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = panels[0].shape[:2]
    header = LABEL_HEIGHT * (2 if title else 1)
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * GAP, height + header), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size)
    if title:
        draw.text((3, 2), _fitted(draw, title, font, canvas.width - 6), font=font, fill=TEXT)
    for number, (panel, label) in enumerate(zip(panels, labels)):
        left = number * (width + GAP)
        canvas.paste(Image.fromarray(panel, "RGB"), (left, header))
        draw.text((left + 3, header - LABEL_HEIGHT + 2), _fitted(draw, label, font, width - 6), font=font, fill=TEXT)
    return canvas


def _fitted(draw, text: str, font, room: int) -> str:
    """``text``, cut short with an ellipsis where it is wider than ``room`` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "...", font=font) > room:
        text = text[:-1]
    return text + "..." if text else ""


def encoded(image, format: str = "PNG", quality: int = 80) -> bytes:
    """The bytes of a PIL image saved as PNG (lossless) or JPEG (``quality``, for small embeds)."""
    import io

    buffer = io.BytesIO()
    if format.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image, quality: int = 80) -> str:
    """A PIL image as an inline JPEG ``data:`` URI, for pages that must stay one self-contained file."""
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(encoded(image, "JPEG", quality=quality)).decode("ascii")


def write_png(path: str | Path, image) -> Path:
    """Save a PIL image as a PNG file, atomically (a killed run never leaves half a picture)."""
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(encoded(image, "PNG"))
    return Path(path)
