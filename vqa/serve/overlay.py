"""Attention maps drawn over the asked-about image, for the page: ``vqa.heatmap`` panels as data: URIs.

The picture is decoded as ``vqa predict --attention`` decodes it (``vqa.images.load_image``,
at most ``PICTURE`` pixels on its longest side) and ``vqa.heatmap.render`` draws one labelled
panel per glimpse or hop (``vqa.box_drawing.render`` the boxes of a run on detector regions);
the page shows the result as an ``<img>`` whose source is the returned URI, so nothing is
written to disk.
"""

from __future__ import annotations

from typing import Sequence

from vqa.serve.uploads import decode

PICTURE = 360  # px: the longest side of each panel
JPEG_QUALITY = 85


def picture_size(width: int, height: int, longest: int = PICTURE) -> tuple[int, int]:
    """(H, W) of the picture: the image scaled down, aspect kept, to at most ``longest`` on its longest side."""
    scale = min(1.0, longest / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_uris(data: bytes, width: int, height: int, answers: Sequence, names: Sequence[str]) -> list[str | None]:
    """One data: URI (JPEG) per answer that carries attention maps, None for one without.

    Args:
        data: the image's bytes.
        width, height: its size in pixels.
        answers: ``vqa.predict.Answer`` objects, each with ``attention`` float (G, H, W) or None, or
            over detector regions (G, K) beside its ``boxes`` (K, 4) in the image's pixels.
        names: the G panel names (``vqa.heatmap.map_names``).
    """
    from vqa import box_drawing, heatmap

    if all(answer.attention is None for answer in answers):
        return [None] * len(answers)
    picture = decode(data, picture_size(width, height))
    uris: list[str | None] = []
    for answer in answers:
        if answer.attention is None:
            uris.append(None)
            continue
        if answer.boxes is not None:
            maps = box_drawing.BoxMaps(answer.attention, answer.boxes, (width, height))
            panels = box_drawing.render(picture, maps, list(names))
        else:
            panels = heatmap.render(picture, answer.attention, list(names))
        uris.append(heatmap.data_uri(panels, quality=JPEG_QUALITY))
    return uris
