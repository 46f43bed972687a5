"""What a client sends ``POST /api/answer``, checked: image bytes and questions.

Every mistake is a ``ClientError``: an HTTP status (4xx) and one sentence saying what to do,
which the app returns as ``{"detail": sentence}``. An image is checked in the order that
costs least: its byte count (``Limits.max_upload_bytes``, 10 MB by default), then its header
(is it an image at all, and how many pixels does it claim: ``Limits.max_pixels`` stops
decompression bombs before any pixel is decoded), then the full decode through
``vqa.images.load_image``, exactly as ``vqa predict`` and feature extraction decode (a
truncated or corrupt file fails here). The bytes are never written to a file, and nothing
the client sends is used as a path.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass

import numpy as np

from vqa.errors import brief

MAX_TOP_K = 1000
SERVE_SPLIT = "upload"  # the split in the name a regions .npz upload is read under
DECODING = threading.BoundedSemaphore(4)  # images decoded at once: a full-size decode can take ~100 MB


class ClientError(Exception):
    """A request the server will not answer: ``status`` (4xx) and ``detail``, one sentence saying what to do."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for.

    Attributes:
        max_upload_bytes: bytes of one uploaded image (the request body may hold a little more).
        max_pixels: width x height of one image, read from its header before decoding.
        max_questions: questions in one request.
        max_question_words: words (whitespace-separated) in one question.
        max_question_chars: characters in one question.
    """

    max_upload_bytes: int = 10 * 10**6
    max_pixels: int = 40 * 10**6
    max_questions: int = 32
    max_question_words: int = 100
    max_question_chars: int = 1000

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: one image, the questions, and room for the multipart framing."""
        return self.max_upload_bytes + self.max_questions * (self.max_question_chars * 4 + 512) + 64 * 1024


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the engine.

    Attributes:
        key: sha256 of its bytes (hex), the feature cache's key.
        data: the bytes themselves (the engine decodes them again if the cache dropped the entry).
        label: what answers give as their ``"image"``: the run's image id or the upload's file name.
        pixels: uint8 (H, W, 3) at the backbone's size, or None when the cache held the image.
        width, height: of the image as sent, in pixels.
    """

    key: str
    data: bytes
    label: str
    pixels: np.ndarray | None
    width: int
    height: int


def content_key(data: bytes) -> str:
    """The cache key of an image: the sha256 of its bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def check_size(data: bytes, limits: Limits) -> None:
    """Refuse an empty upload, or one over ``limits.max_upload_bytes``.

    Raises:
        ClientError: 422 for an empty file, 413 for one too large.
    """
    _check_upload(data, limits, "The uploaded file is empty; choose an image file and upload it again.",
                  "The upload", "send a smaller image (scale it down or save it as JPEG)")


def _check_upload(data: bytes, limits: Limits, empty: str, upload: str, advice: str) -> None:
    """422 ``empty`` for no bytes; 413 "``upload`` is N MB, over the limit; ``advice``." for too many."""
    if not data:
        raise ClientError(422, empty)
    if len(data) > limits.max_upload_bytes:
        raise ClientError(413, too_large_sentence(len(data), limits, upload, advice))


def too_large_sentence(size: int, limits: Limits, upload: str, advice: str) -> str:
    """The sentence for an upload of ``size`` bytes over the limit, in bytes where MB would round to the limit."""
    size_mb, limit_mb = f"{size / 1e6:.1f}", f"{limits.max_upload_bytes / 1e6:g}"
    if float(size_mb) <= float(limit_mb):  # "10.0 MB, over the 10 MB limit" would contradict itself
        said = f"{size:,} bytes, over the {limit_mb} MB ({limits.max_upload_bytes:,}-byte) limit"
    else:
        said = f"{size_mb} MB, over the {limit_mb} MB limit"
    return f"{upload} is {said}; {advice}."


def body_too_large_sentence(limits: Limits) -> str:
    """The sentence for a request body over ``limits.max_body_bytes`` (refused before it is read)."""
    return (f"The request is over the {limits.max_upload_bytes / 1e6:g} MB upload limit; "
            "send a smaller image (scale it down or save it as JPEG).")


def image_size(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) from the image's header, which is all this reads.

    Raises:
        ClientError: 415 when it is not an image Pillow knows, 413 when it claims more than
            ``limits.max_pixels`` pixels, 422 when its header is corrupt.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise ClientError(415, "The upload is not an image Pillow can read; upload a JPEG or PNG file.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        width = height = None
    except Exception as error:  # Pillow's header parsers raise OSError, SyntaxError, ValueError, ...
        raise ClientError(422, f"The image header cannot be read ({type(error).__name__}: {brief(error)}); "
                               "upload the complete file again, as JPEG or PNG.") from None
    if width is None or width * height > limits.max_pixels:
        claimed = f"is {width} x {height} pixels" if width is not None else "claims too many pixels"
        raise ClientError(413, f"The image {claimed}, over the limit of {limits.max_pixels / 1e6:g} megapixels; "
                               "scale it down and upload it again.")
    return width, height


def decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The image as every backbone takes it: ``vqa.images.load_image`` on the bytes, at ``size`` (H, W).

    Raises:
        ClientError: 422 when the image cannot be decoded (truncated, corrupt).
    """
    from vqa import images as images_lib

    try:
        with DECODING:
            return images_lib.load_image(io.BytesIO(data), size)
    except images_lib.UnreadableImage as error:
        raise ClientError(422, f"The image cannot be decoded ({error.reason}); it may be cut short or damaged, "
                               "so upload the complete file again.") from None


def check_questions(questions: list[str] | None, limits: Limits) -> list[str]:
    """The questions, stripped, after checking there are some and each is a reasonable question.

    Raises:
        ClientError: 422 for no question, too many, an empty one, or one too long.
    """
    questions = [question.strip() for question in questions or []]
    if not questions:
        raise ClientError(422, 'Ask a question: add a "question" form field, e.g. question=what color is the car?')
    if len(questions) > limits.max_questions:
        raise ClientError(422, f"{len(questions)} questions in one request are too many; "
                               f"send at most {limits.max_questions} per request.")
    for number, question in enumerate(questions, start=1):
        which = "The question" if len(questions) == 1 else f"Question {number}"
        if not question:
            raise ClientError(422, f'{which} is empty; type a question about the image, e.g. "what color is the car?".')
        words = len(question.split())
        if words > limits.max_question_words or len(question) > limits.max_question_chars:
            size = f"{words} words" if words > limits.max_question_words else f"{len(question)} characters"
            raise ClientError(422, f"{which} has {size}; ask a shorter question (at most "
                                   f"{limits.max_question_words} words and {limits.max_question_chars} characters).")
    return questions


def check_top_k(top_k: int) -> int:
    """``top_k`` when it is from 1 to ``MAX_TOP_K``.

    Raises:
        ClientError: 422 otherwise.
    """
    if not 1 <= top_k <= MAX_TOP_K:
        raise ClientError(422, f"top_k must be a whole number from 1 to {MAX_TOP_K}, not {top_k}.")
    return top_k


def check_regions_size(data: bytes, limits: Limits) -> None:
    """Refuse an empty regions upload, or one over ``limits.max_upload_bytes`` (the image's limit).

    Raises:
        ClientError: 422 for an empty file, 413 for one too large.
    """
    _check_upload(data, limits, "The regions upload is empty; attach the photo's regions file again.",
                  "The regions upload", "send a file of this photo's regions alone (one TSV line, or one .npz or "
                  ".h5 file)")


def regions_from_upload(data: bytes, photo: str | None, region_id: int | None, feature_dim: int,
                        file_name: str | None = None):
    """The photo's detector regions from an uploaded region file: a TSV, or one .npz or HDF5 file.

    The bytes go to a temporary file of a name made here (its kind told from its first bytes; of the
    client's file name only the COCO image id of an MCAN .npz name is kept, as a number) and are read
    as ``vqa predict --regions`` reads a file (``vqa.photo_regions.read_photo_regions``); the file is
    deleted after.

    Args:
        data: the uploaded bytes.
        photo: the photo's name (the upload's file name, or the run image's id), whose digits may
            name the image of a file holding several.
        region_id: the ``region_id`` field, or None.
        feature_dim: the D the run reads.
        file_name: the region file's name as the client sent it, or None.

    Returns:
        ``vqa.photo_regions.PhotoRegions``.

    Raises:
        ClientError: 422, in one sentence, for a file that cannot be read or has no regions for the photo.
    """
    import tempfile
    from pathlib import Path

    import h5py

    from vqa import layout
    from vqa.errors import VQAError
    from vqa.photo_regions import RegionRequest, read_photo_regions

    named = layout.parse_image_filename(Path(file_name or "").name)
    npz = f"{layout.image_filename(SERVE_SPLIT, named[1])}.npz" if named else "regions.npz"
    with tempfile.TemporaryDirectory(prefix="vqa-serve-regions-") as folder:
        path = Path(folder) / (npz if data[:4] == b"PK\x03\x04" else "regions.h5")
        path.write_bytes(data)
        if path.suffix == ".h5" and not h5py.is_hdf5(path):
            path = path.rename(path.with_suffix(".tsv"))
        request = RegionRequest(photo, region_id, 'send the image id in the "region_id" field')
        try:
            [found] = read_photo_regions(path, [request], label="The regions upload", feature_dim=feature_dim)
        except VQAError as error:  # the temporary file is no name for the client
            raise ClientError(422, str(error).replace(str(path), "the regions upload").replace(folder, "")) from None
    return found
