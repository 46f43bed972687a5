"""Decoding image files into the uint8 RGB arrays every backbone takes.

Feature extraction and predict both decode through ``load_image``, so a question
about a new photo sees exactly the training-time preprocessing. ``check_image`` is
the cheap header-only check predict makes before any model is loaded.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from vqa.errors import brief


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def _opened(path: str | os.PathLike):
    """Pillow's image of ``path``; whatever goes wrong, while opening or decoding it, is an ``UnreadableImage``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError:
        raise UnreadableImage("file does not exist") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the warning under -W error
        raise UnreadableImage(f"too many pixels ({brief(error)})") from None
    except MemoryError:
        raise UnreadableImage("too large to decode") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(_corrupt(error)) from None


def check_image(path: str | os.PathLike) -> None:
    """Read only the header of an image file: cheap, and catches text files, truncated headers and the like.

    Raises:
        UnreadableImage: missing, not an image, a corrupt header, or a decompression bomb.
    """
    with _opened(path):
        pass


def load_image(path: str | os.PathLike, image_size: tuple[int, int]) -> np.ndarray:
    """Decode an image file into the array every backbone takes.

    Any mode (grayscale, palette, CMYK, RGBA, 16-bit) becomes RGB and the image is
    resized with bilinear filtering, without keeping the aspect ratio, as VGG-16
    features for VQA were computed. The file's content decides the format, so a
    PNG saved as .jpg decodes fine. EXIF orientation is ignored: COCO images are
    used as stored.

    Args:
        path: image file.
        image_size: (H, W).

    Returns:
        uint8 (H, W, 3).

    Raises:
        UnreadableImage: missing, truncated, corrupt, not an image, or a
            decompression bomb.
    """
    from PIL import Image

    height, width = image_size
    with _opened(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit and float images: scale to 8 bits by their range before colour conversion.
            values = np.asarray(image, dtype=np.float32)
            top = float(values.max()) or 1.0
            image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _corrupt(error: BaseException) -> str:
    return f"corrupt or truncated ({type(error).__name__}: {brief(error)})"
