"""Attention over detector boxes drawn on their image: ``vqa.heatmap``'s counterpart for runs on regions.

A region run's map is float (K,) weights over an image's boxes (``vqa.attention``, summing to
1). ``overlay`` draws every box outlined and filled in ``vqa.heatmap.colour_map``'s colour of
its weight divided by the map's top weight, more opaque the higher that share, lowest weight
first so that the strongest box lies on top, then writes the weight of the ``LABELLED``
strongest in their top-left corner. ``render`` lays one panel per glimpse or hop out as
``vqa.heatmap.render`` does (same labels, title and sizes), over the photo or, without one, a
grey canvas of the image size the region file records.

Only Pillow and numpy: no plotting library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vqa import heatmap

FILL_ALPHA = (0.06, 0.4)  # share of the box's colour inside it, at no weight and at the map's top weight
EDGE_ALPHA = (0.3, 1.0)  # the same for its outline
EDGE = 2  # px of the outline
LABELLED = 3  # the strongest boxes whose weight is written on them


@dataclass(frozen=True)
class BoxMaps:
    """Attention maps over one image's detector boxes.

    Attributes:
        maps: float (G, K), one map per glimpse or hop, over the K boxes.
        boxes: float (K, 4) x1, y1, x2, y2 in the pixels of an image of ``size``.
        size: (width, height) of the image the boxes are placed in.
    """

    maps: np.ndarray
    boxes: np.ndarray
    size: tuple[float, float]


def overlay(image: np.ndarray, boxes: np.ndarray, weights: np.ndarray, font_size: int = 12) -> np.ndarray:
    """One map's boxes drawn over its image.

    Args:
        image: uint8 (height, width, 3) RGB.
        boxes: float (K, 4) x1, y1, x2, y2 in the image's pixels.
        weights: float (K,), non-negative.
        font_size: of the weight labels.

    Returns:
        uint8 (height, width, 3).
    """
    from PIL import Image, ImageDraw, ImageFont

    picture = np.asarray(image, np.float32).copy()
    weights = np.asarray(weights, np.float32).reshape(-1)
    top = float(weights.max()) if weights.size else 0.0
    shares = weights / top if top > 0 else np.zeros_like(weights)
    colours = heatmap.colour_map(shares).astype(np.float32)
    order = np.argsort(weights, kind="stable")  # lowest first: the strongest is drawn last, on top
    corners = [_pixels(box, picture.shape[1], picture.shape[0]) for box in np.asarray(boxes, np.float32)]
    for k in order:
        x1, y1, x2, y2 = corners[k]
        inside = picture[y1:y2, x1:x2]
        edge = np.ones(inside.shape[:2], bool)
        edge[EDGE:-EDGE or None, EDGE:-EDGE or None] = False
        fill = FILL_ALPHA[0] + (FILL_ALPHA[1] - FILL_ALPHA[0]) * shares[k]
        line = EDGE_ALPHA[0] + (EDGE_ALPHA[1] - EDGE_ALPHA[0]) * shares[k]
        alpha = np.where(edge, line, fill)[..., None]
        inside[:] = (1 - alpha) * inside + alpha * colours[k]
    drawn = Image.fromarray(np.clip(np.rint(picture), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(drawn)
    font = ImageFont.load_default(size=font_size)
    for k in order[-LABELLED:]:  # the strongest label last, on top of the others
        x1, y1 = corners[k][:2]
        text = f"{float(weights[k]):.2f}"
        left, top_edge, right, bottom = draw.textbbox((x1 + EDGE + 1, y1 + EDGE), text, font=font)
        draw.rectangle((left - 1, top_edge - 1, right + 1, bottom + 1), fill=heatmap.BACKGROUND)
        draw.text((x1 + EDGE + 1, y1 + EDGE), text, font=font, fill=heatmap.TEXT)
    return np.asarray(drawn, np.uint8)


def _pixels(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A box's whole-pixel span inside the image, at least one pixel each way."""
    x1, x2 = (int(np.clip(round(float(v)), 0, width)) for v in (min(box[0], box[2]), max(box[0], box[2])))
    y1, y2 = (int(np.clip(round(float(v)), 0, height)) for v in (min(box[1], box[3]), max(box[1], box[3])))
    x1, y1 = min(x1, width - 1), min(y1, height - 1)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def render(image, box_maps: BoxMaps, names: Sequence[str] | None = None, title: str | None = None,
           longest: int | None = None, grow: bool = False, font_size: int = 12):
    """The image once per map, each with its map's boxes drawn over it, side by side under their labels.

    Args:
        image: the photo (a PIL image or uint8 (height, width, 3) RGB) the boxes were found in, at
            any scale (the boxes are scaled from ``box_maps.size`` to it), or None to draw them on
            a grey canvas of ``box_maps.size``'s proportions.
        box_maps: the maps, boxes and the image size they are placed in.
        names, title, longest, grow, font_size: as ``vqa.heatmap.render``.

    Returns:
        PIL.Image.Image, RGB, laid out as ``vqa.heatmap.render``'s.
    """
    maps = np.asarray(box_maps.maps, np.float32)
    boxes = np.asarray(box_maps.boxes, np.float32).reshape(-1, 4)
    if maps.ndim != 2 or 0 in maps.shape or maps.shape[1] != len(boxes):
        raise ValueError(f"expected attention maps (G, K) over {len(boxes)} boxes, got shape {maps.shape}")
    width, height = (float(side) for side in box_maps.size)
    picture = heatmap.panel_picture(image, (width, height), longest, grow)
    scale = np.array([picture.shape[1] / width, picture.shape[0] / height] * 2, np.float32)
    panels = [overlay(picture, boxes * scale, weights, font_size) for weights in maps]
    return heatmap.lay_out(panels, heatmap.panel_labels(names, maps), title, font_size)
