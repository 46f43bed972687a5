"""Image backbones and the HDF5 image-feature files they write.

Preprocessing turns each split's images into ``OUT/<split>/image_features.h5``
(datasets ``image_ids`` int64 (M,), ``features`` float16|float32 (M, D); attribute
``backbone``: the JSON of the ``BackboneSpec``), one row per readable image.
Training reads those rows; predict rebuilds the same backbone from the spec and
runs the same ``load_image`` and ``Backbone.features`` on new images, so a
question about a new photo sees exactly the training-time preprocessing.

Two backbones:
- ``vgg16``: Keras's VGG-16 up to ``fc2`` (the fc7 layer of the VQA papers,
  4096-d, 224x224 input, caffe-style ``preprocess_input``), with ImageNet
  weights, seeded random weights ("none") or a weights file.
- ``keras``: any saved ``.keras`` feature model taking 0-255 RGB images and
  scaling them itself (the demo's small stand-in).

Features precomputed elsewhere (the neuraltalk ``vgg_feats.mat``) are imported
into the same layout by ``import_mat_features``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vqa.errors import VQAError
from vqa.progress import progress
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

VGG16_IMAGE_SIZE = (224, 224)
VGG16_FEATURE_DIM = 4096
VGG16_FEATURE_LAYER = "fc2"  # "fc7" in the Caffe naming the VQA papers use
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
FEATURE_DTYPES = ("float16", "float32")

# Row states in the .partial file of a running extraction.
_PENDING, _DONE, _SKIPPED = 0, 1, 2
_REASON_BYTES = 200
_COPY_ROWS = 4096


# --- backbones -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """What it takes to rebuild a backbone: saved with the features and the model.

    Attributes:
        kind: "vgg16" or "keras" (a saved ``.keras`` feature model).
        weights: for vgg16 "imagenet", "none" (random, seeded) or a weights file
            path; for keras the ``.keras`` file path.
        image_size: (H, W) the images are resized to.
        feature_dim: D, the feature width.
        seed: seeds the random weights of vgg16 "none".
    """

    kind: str
    weights: str
    image_size: tuple[int, int]
    feature_dim: int
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (image_size as a list)."""
        return {"kind": self.kind, "weights": self.weights, "image_size": list(self.image_size),
                "feature_dim": self.feature_dim, "seed": self.seed}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in feature files."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BackboneSpec":
        """Inverse of ``to_dict``.

        Raises:
            VQAError: a field is missing or has the wrong type.
        """
        try:
            spec = cls(kind=str(data["kind"]), weights=str(data["weights"]),
                       image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
                       feature_dim=int(data["feature_dim"]), seed=int(data.get("seed", 0)))
        except (KeyError, TypeError, ValueError, IndexError):
            raise VQAError(f"backbone description {dict(data)!r} is incomplete; run preprocessing again.") from None
        if spec.kind not in ("vgg16", "keras"):
            raise VQAError(f"backbone kind {spec.kind!r} is unknown (expected vgg16 or keras); "
                           "run preprocessing again.")
        return spec


class Backbone:
    """A model mapping uint8 RGB images (n, H, W, 3) to features (n, D).

    The preprocessing lives here, with the model, so extraction and predict
    cannot disagree about it.
    """

    def __init__(self, spec: BackboneSpec, model, preprocess: Callable[[np.ndarray], np.ndarray]):
        self.spec = spec
        self.model = model
        self._preprocess = preprocess
        self.batches_run = 0  # model calls so far; lets tests see that resumed work is not redone

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the images must have: ``load_image(path, backbone.image_size)``."""
        return self.spec.image_size

    @property
    def feature_dim(self) -> int:
        """D, the width of a feature row."""
        return self.spec.feature_dim

    def features(self, images: np.ndarray) -> np.ndarray:
        """Run one batch through preprocessing and the model.

        Args:
            images: uint8 (n, H, W, 3) RGB, as ``load_image`` returns them.

        Returns:
            float32 (n, D).
        """
        images = np.asarray(images)
        height, width = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(f"expected uint8 images (n, {height}, {width}, 3), got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        outputs = self.model.predict_on_batch(self._preprocess(images))
        self.batches_run += 1
        return np.asarray(outputs, dtype=np.float32)

    @classmethod
    def from_spec(cls, spec: BackboneSpec, keras_path: str | os.PathLike | None = None) -> "Backbone":
        """Rebuild the backbone a feature file or run was made with.

        Args:
            spec: the saved spec.
            keras_path: for a ``keras`` spec, where its ``.keras`` file is now
                (e.g. the copy in OUT/backbone.keras); defaults to ``spec.weights``.

        Raises:
            VQAError: the weights cannot be found, or give other shapes than the spec.
        """
        if spec.kind == "keras":
            backbone = _keras_file_backbone(Path(keras_path if keras_path is not None else spec.weights))
        elif spec.weights == "none":
            backbone = _vgg16_backbone("none", seed=spec.seed)
        else:
            backbone = _vgg16_backbone(spec.weights)
        if (backbone.image_size, backbone.feature_dim) != (tuple(spec.image_size), spec.feature_dim):
            raise VQAError(
                f"backbone {spec.weights} gives {backbone.image_size} images -> {backbone.feature_dim} features "
                f"but the saved spec says {tuple(spec.image_size)} -> {spec.feature_dim}; "
                "use the backbone the features were extracted with."
            )
        return Backbone(spec, backbone.model, backbone._preprocess)


def load_backbone(weights: "str | os.PathLike | BackboneSpec", seed: int = 0) -> Backbone:
    """Build the image backbone named on the command line.

    Args:
        weights: "imagenet" (VGG-16 with ImageNet weights, fc7 features),
            "none" (VGG-16 with random weights fixed by ``seed``), a VGG-16
            weights file (``.h5`` / ``.weights.h5``), a ``.keras`` feature model
            (input (H, W, 3) 0-255 RGB, output (D,); it scales its input itself),
            or a ``BackboneSpec`` to rebuild.
        seed: seeds the "none" weights, so rebuilding gives the same features.

    Raises:
        VQAError: the weights cannot be downloaded, found or loaded.
    """
    if isinstance(weights, BackboneSpec):
        return Backbone.from_spec(weights)
    weights = str(weights)
    if weights in ("imagenet", "none"):
        return _vgg16_backbone(weights, seed=seed)
    path = Path(weights)
    if not path.is_file():
        raise VQAError(f"backbone weights {path} do not exist; pass --weights imagenet, none, "
                       "a VGG-16 .h5/.weights.h5 file or a .keras feature model.")
    if path.suffix == ".keras":
        return _keras_file_backbone(path)
    if path.suffix in (".h5", ".hdf5"):
        return _vgg16_backbone(str(path.resolve()))
    raise VQAError(f"backbone weights {path} are neither a VGG-16 .h5/.weights.h5 file nor a .keras feature model; "
                   "pass one of those, imagenet or none.")


def _vgg16_preprocess(images: np.ndarray) -> np.ndarray:
    import keras

    # Caffe style: RGB -> BGR and ImageNet mean subtraction, no scaling, as the weights were trained.
    return keras.applications.vgg16.preprocess_input(images.astype(np.float32))


def _vgg16_backbone(weights: str, seed: int = 0) -> Backbone:
    import keras

    if weights == "imagenet":
        try:
            vgg = keras.applications.VGG16(include_top=True, weights="imagenet")
        except Exception as error:  # Keras raises a bare Exception for a failed download
            reason = _brief(str(error).rsplit(" -- ", 1)[-1])
            raise VQAError(
                f"the VGG-16 ImageNet weights are not in Keras's cache and could not be downloaded ({reason}): "
                f"copy {IMAGENET_WEIGHTS_FILE} to {_keras_cache() / 'models' / IMAGENET_WEIGHTS_FILE} "
                "or pass --weights PATH to a VGG-16 weights file."
            ) from None
    else:
        vgg = keras.applications.VGG16(include_top=True, weights=None)
        if weights == "none":
            _initialise_deterministically(vgg, seed)
        else:
            try:
                vgg.load_weights(weights)
            except Exception as error:  # h5py, ValueError for mismatched layers, ...
                raise VQAError(f"VGG-16 weights file {weights} could not be loaded ({_brief(error)}); "
                               "pass a weights file saved from keras.applications.VGG16(include_top=True).") from None
    model = keras.Model(vgg.inputs, vgg.get_layer(VGG16_FEATURE_LAYER).output, name="vgg16_fc7")
    spec = BackboneSpec(kind="vgg16", weights=weights, image_size=VGG16_IMAGE_SIZE,
                        feature_dim=VGG16_FEATURE_DIM, seed=seed if weights == "none" else 0)
    return Backbone(spec, model, _vgg16_preprocess)


def _brief(error: BaseException | str, limit: int = 160) -> str:
    """An error message on one line, cut to ``limit`` characters, for inside a VQAError sentence."""
    message = " ".join(str(error).split())
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _keras_cache() -> Path:
    """Where keras.utils.get_file keeps downloads: $KERAS_HOME or ~/.keras (/tmp/.keras if that is read-only)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    if home.exists() and not os.access(home, os.W_OK):
        home = Path("/tmp/.keras")
    return home


def _initialise_deterministically(model, seed: int) -> None:
    """Glorot-uniform kernels and zero biases from one numpy generator.

    Keras's own initialisation depends on global random state; this makes the
    "none" backbone a pure function of ``seed``, so predict rebuilds it exactly.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for variable in layer.weights:
            shape = tuple(variable.shape)
            if len(shape) < 2:
                variable.assign(np.zeros(shape, dtype=np.float32))
                continue
            receptive_field = math.prod(shape[:-2])
            limit = math.sqrt(6.0 / (receptive_field * (shape[-2] + shape[-1])))
            values = rng.random(shape, dtype=np.float32)
            values *= 2 * limit
            values -= limit
            variable.assign(values)


def _keras_file_backbone(path: Path) -> Backbone:
    import keras

    if not path.is_file():
        raise VQAError(f"backbone model {path} does not exist; pass --weights PATH to a .keras feature model.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        if "Lambda" in str(error):
            raise VQAError(f"backbone model {path} holds a Lambda layer, which Keras's safe mode does not load "
                           "(it could run any code): rebuild the model from built-in or registered layers.") from None
        raise VQAError(f"backbone model {path} could not be loaded ({_brief(error)}); "
                       "save it again with model.save(PATH.keras).") from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if (len(input_shape) != 4 or input_shape[3] != 3 or None in input_shape[1:3] or len(output_shape) != 2
            or output_shape[1] is None):
        raise VQAError(f"backbone model {path} maps {input_shape} -> {output_shape}; a feature model must map "
                       "(batch, H, W, 3) images to (batch, D) features.")
    spec = BackboneSpec(kind="keras", weights=str(path.resolve()), image_size=(int(input_shape[1]), int(input_shape[2])),
                        feature_dim=int(output_shape[1]))
    # The model scales its own input, so the batch goes in as float 0-255 unchanged.
    return Backbone(spec, model, lambda images: images.astype(np.float32))


# --- images ----------------------------------------------------------------------------------------


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    from PIL import Image, UnidentifiedImageError

    height, width = image_size
    try:
        with Image.open(path) as image:
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
    except FileNotFoundError:
        raise UnreadableImage("file does not exist") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # the warning under -W error
        raise UnreadableImage(f"too many pixels ({_brief(error)})") from None
    except MemoryError:
        raise UnreadableImage("too large to decode") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(f"corrupt or truncated ({type(error).__name__}: {error})") from None


def _try_load(path: str, image_size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, image_size), None
    except UnreadableImage as error:
        return None, error.reason


# --- extraction ------------------------------------------------------------------------------------


@dataclass
class ExtractionResult:
    """What ``extract_features`` / ``import_mat_features`` wrote.

    Attributes:
        path: the feature file.
        image_ids: int64 (M,), its rows' image ids, in input order.
        skipped: image id -> reason, for images without a row.
        computed: rows computed (or imported) by this call.
        resumed: rows found done in a ``.partial`` file and kept.
        reused: the complete file was already there and nothing was done.
    """

    path: Path
    image_ids: np.ndarray
    skipped: dict[int, str]
    computed: int = 0
    resumed: int = 0
    reused: bool = False


def extract_features(images: Sequence[tuple[int, str | os.PathLike]], backbone: Backbone,
                     out_path: str | os.PathLike, batch_size: int = 32, dtype: str = "float16",
                     workers: int | None = None, prefetch_batches: int = 4) -> ExtractionResult:
    """Compute one feature row per readable image into ``out_path``.

    Decoding and resizing run in a thread pool (Pillow releases the GIL) a few
    batches ahead of the model, which runs batched in the calling thread.

    Work goes to ``out_path + ".partial"``: an HDF5 file with preallocated rows, a
    per-row state (pending / done / skipped) and skip reasons, flushed after each
    batch with the rows written before their state. A run killed at any point,
    SIGKILL included, continues where it stopped when started again with the
    same images, backbone and dtype; a ``.partial`` from other inputs is
    discarded. Batches are fixed slices of the input, so a resumed run feeds the
    model the same batches as an uninterrupted one and writes the same file.
    The final file appears by atomic rename; an existing complete file for the
    same inputs is reused as it is.

    Args:
        images: (image id, path) pairs; ids must be unique.
        backbone: from ``load_backbone``.
        out_path: the feature file (``image_features.h5``).
        batch_size: images per model call.
        dtype: "float16" (half the disk and memory) or "float32".
        workers: decoding threads; default min(8, CPU count).
        prefetch_batches: batches decoded ahead of the model.

    Returns:
        The ``ExtractionResult``; unreadable images are in ``skipped`` with a reason.
    """
    import h5py

    dtype = _check_dtype(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out_path = Path(out_path)
    partial_path = Path(f"{out_path}.partial")
    image_ids = np.array([int(image_id) for image_id, _ in images], dtype=np.int64)
    paths = [os.path.abspath(path) for _, path in images]
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to extract_features must be unique")
    spec_json = backbone.spec.to_json()

    existing = _complete_result(out_path, image_ids, spec_json, dtype)
    if existing is not None:
        partial_path.unlink(missing_ok=True)
        return existing

    signature = _signature(image_ids, paths, spec_json, dtype)
    try:
        with _open_partial(partial_path, signature, image_ids, backbone.feature_dim, dtype) as partial:
            state = partial["state"][...]
            pending = np.flatnonzero(state == _PENDING)
            resumed = len(state) - len(pending)
            if resumed:
                logger.warning("resuming feature extraction in %s: %d of %d images already done",
                               partial_path, resumed, len(state))
            # Fixed slices of the input: the same batches whether or not the run was interrupted.
            batches = np.split(pending, np.flatnonzero(np.diff(pending // batch_size)) + 1) if len(pending) else []
            _run_batches(batches, paths, backbone, partial, workers, prefetch_batches, total=len(state),
                         done=resumed)
    except OSError as error:
        if error.errno and not error.filename:  # h5py names no file, e.g. for a full disk
            raise OSError(error.errno, os.strerror(error.errno), str(partial_path)) from error
        raise

    with h5py.File(partial_path, "r") as partial:
        state = partial["state"][...]
        skipped = _skipped_reasons(partial, state, image_ids)
        kept = _write_feature_file(out_path, image_ids, state, partial["features"], spec_json, dtype, skipped)
    partial_path.unlink()
    return ExtractionResult(out_path, kept, skipped, computed=int(np.count_nonzero(state[pending] == _DONE)),
                            resumed=resumed)


def _run_batches(batches: list[np.ndarray], paths: list[str], backbone: Backbone, partial, workers: int | None,
                 prefetch_batches: int, total: int, done: int) -> None:
    """Decode ahead in threads, run the model batch by batch, record each batch in the .partial file."""
    workers = workers or min(8, os.cpu_count() or 1)
    features, state, reasons = partial["features"], partial["state"], partial["reasons"]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    in_flight: collections.deque = collections.deque()
    upcoming = iter(batches)

    def submit_next_batch() -> None:
        positions = next(upcoming, None)
        if positions is not None:
            in_flight.append((positions, [pool.submit(_try_load, paths[p], backbone.image_size) for p in positions]))

    try:
        for _ in range(max(1, prefetch_batches)):
            submit_next_batch()
        with progress(total=total, desc="image features", unit="img") as bar:
            bar.update(done)
            while in_flight:
                positions, futures = in_flight.popleft()
                submit_next_batch()
                loaded = [future.result() for future in futures]
                readable = [i for i, (image, _) in enumerate(loaded) if image is not None]
                rows = np.zeros((len(positions), backbone.feature_dim), dtype=features.dtype)
                if readable:
                    rows[readable] = backbone.features(np.stack([loaded[i][0] for i in readable]))
                new_state = np.array([_SKIPPED if image is None else _DONE for image, _ in loaded], dtype=np.int8)
                _write_rows(features, positions, rows)
                for position, (image, reason) in zip(positions, loaded):
                    if image is None:
                        reasons[position] = reason.encode("utf-8")[:_REASON_BYTES]
                # Rows reach the file before the state that vouches for them.
                partial.flush()
                _write_rows(state, positions, new_state)
                partial.flush()
                bar.update(len(positions))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_rows(dataset, positions: np.ndarray, values: np.ndarray) -> None:
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 == len(positions):
        dataset[first:last + 1] = values
    else:
        dataset[positions.tolist()] = values


def _signature(image_ids: np.ndarray, paths: list[str], spec_json: str, dtype: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": 1, "backbone": spec_json, "dtype": dtype}).encode())
    digest.update(image_ids.tobytes())
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _open_partial(partial_path: Path, signature: str, image_ids: np.ndarray, feature_dim: int, dtype: str):
    """Open the .partial file of this exact job, creating it (atomically) when absent or foreign.

    The file is locked while open, so a second process on the same job stops at once
    instead of writing the same rows.
    """
    if partial_path.exists():
        opened = contextlib.ExitStack()
        try:
            partial = opened.enter_context(open_h5(partial_path, "r+", lock=True))
        except BlockingIOError:
            raise VQAError(f"another process is writing {partial_path}; wait for it to finish or stop it "
                           "before extracting again.") from None
        except OSError as error:
            if error.errno:  # a failing disk, not a damaged file: deleting the work would not help
                raise
            reason = f"it is unreadable ({_brief(error)})"
        else:
            if partial.attrs.get("signature") == signature:
                with opened:
                    yield partial
                return
            opened.close()
            reason = "it belongs to other images, another backbone or another dtype"
        logger.warning("starting feature extraction afresh: %s exists but %s", partial_path, reason)
        partial_path.unlink()

    with atomic_path(partial_path) as tmp:
        with open_h5(tmp, "w") as partial:
            partial.attrs["signature"] = signature
            partial.create_dataset("image_ids", data=image_ids)
            # Space allocated now and never moved: later writes touch raw data only, never HDF5
            # metadata, which is what lets the file survive a SIGKILL in the middle of a write.
            # Feature rows are only read once their state says done, so they need no zero fill.
            for name, shape, row_dtype, fill_time in (
                    ("features", (len(image_ids), feature_dim), dtype, "never"),
                    ("state", (len(image_ids),), np.int8, "alloc"),
                    ("reasons", (len(image_ids),), f"S{_REASON_BYTES}", "alloc")):
                plist = _early_allocation()
                partial.create_dataset(name, shape=shape, dtype=row_dtype, dcpl=plist, fill_time=fill_time)
    with open_h5(partial_path, "r+", lock=True) as partial:
        yield partial


def _early_allocation():
    """Dataset-creation properties that allocate all of a dataset's space when it is created."""
    import h5py

    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return plist


def _skipped_reasons(partial, state: np.ndarray, image_ids: np.ndarray) -> dict[int, str]:
    positions = np.flatnonzero(state == _SKIPPED)
    reasons = partial["reasons"][positions.tolist()] if len(positions) else []
    return {int(image_ids[p]): reason.decode("utf-8", "ignore") for p, reason in zip(positions, reasons)}


def _complete_result(out_path: Path, image_ids: np.ndarray, spec_json: str, dtype: str) -> ExtractionResult | None:
    """The result for an existing complete file of the same images and backbone, else None."""
    import h5py

    if not out_path.is_file():
        return None
    try:
        with h5py.File(out_path, "r") as f:
            stored_ids = f["image_ids"][...]
            same_backbone = json.loads(f.attrs["backbone"]) == json.loads(spec_json)
            same_dtype = f["features"].dtype == np.dtype(dtype)
            skipped = {int(k): v for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}
    except (OSError, KeyError, ValueError):
        logger.warning("rewriting %s: it is not a complete feature file", out_path)
        return None
    expected = np.array([i for i in image_ids.tolist() if i not in skipped], dtype=np.int64)
    if (same_backbone and same_dtype and set(skipped) <= set(image_ids.tolist())
            and np.array_equal(stored_ids, expected)):
        return ExtractionResult(out_path, stored_ids, skipped, reused=True)
    logger.warning("rewriting %s: it was made for other images, another backbone or another dtype", out_path)
    return None


def _write_feature_file(out_path: Path, image_ids: np.ndarray, state: np.ndarray, features, spec_json: str,
                        dtype: str, skipped: Mapping[int, str], extra_attrs: Mapping[str, str] | None = None,
                        ) -> np.ndarray:
    """Write the rows whose state is done, in input order, atomically; return their ids."""
    kept = np.flatnonzero(state == _DONE)
    with atomic_path(out_path) as tmp:
        with open_h5(tmp, "w") as f:
            f.create_dataset("image_ids", data=image_ids[kept])
            out = f.create_dataset("features", shape=(len(kept), features.shape[1]), dtype=dtype)
            written = 0
            for start in range(0, len(state), _COPY_ROWS):
                stop = min(start + _COPY_ROWS, len(state))
                keep = state[start:stop] == _DONE
                if keep.any():
                    block = np.asarray(features[start:stop])[keep]
                    out[written:written + len(block)] = block
                    written += len(block)
            f.attrs["backbone"] = spec_json
            f.attrs["skipped"] = json.dumps({str(k): v for k, v in skipped.items()})
            for key, value in (extra_attrs or {}).items():
                f.attrs[key] = value
    return image_ids[kept]


def _check_dtype(dtype: str) -> str:
    dtype = str(np.dtype(dtype))
    if dtype not in FEATURE_DTYPES:
        raise VQAError(f"feature dtype {dtype!r} is not supported; use float16 or float32.")
    return dtype


# --- reading and importing -------------------------------------------------------------------------


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a feature file.

    Returns:
        (image_ids int64 (M,), features (M, D) in the stored dtype).

    Raises:
        VQAError: the file is missing, still being written, or not a feature file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        if Path(f"{path}.partial").exists():
            raise VQAError(f"image features {path} are incomplete ({path}.partial exists); "
                           "run preprocessing again to finish them.")
        raise VQAError(f"image features {path} do not exist; run preprocessing first.")
    try:
        with h5py.File(path, "r") as f:
            image_ids, features = f["image_ids"][...], f["features"][...]
    except (OSError, KeyError) as error:
        raise VQAError(f"image features {path} are not a readable feature file ({_brief(error)}); "
                       "delete it and run preprocessing again.") from None
    if features.ndim != 2 or len(features) != len(image_ids):
        raise VQAError(f"image features {path} hold {len(image_ids)} ids for features of shape {features.shape}; "
                       "delete it and run preprocessing again.")
    return image_ids.astype(np.int64), features


def read_backbone_spec(path: str | os.PathLike) -> BackboneSpec:
    """The ``BackboneSpec`` a feature file was made with (its ``backbone`` attribute)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return BackboneSpec.from_dict(json.loads(f.attrs["backbone"]))
    except (OSError, KeyError, ValueError) as error:
        raise VQAError(f"image features {path} do not say which backbone made them ({_brief(error)}); "
                       "run preprocessing again.") from None


def import_mat_features(mat_path: str | os.PathLike, id_map_path: str | os.PathLike, image_ids: Iterable[int],
                        out_path: str | os.PathLike, dtype: str = "float16",
                        backbone: BackboneSpec | None = None) -> ExtractionResult:
    """Import neuraltalk-style precomputed features into the feature-file layout.

    The .mat file holds MATLAB variable ``feats``, float32 (D, N), one column per
    image; the id map has one line ``"<coco image id> <column>"`` per image
    (0-based columns). MATLAB v7.3 files are HDF5 and are read with h5py (where
    the same array appears transposed, (N, D)).

    Args:
        mat_path: the .mat file.
        id_map_path: the id map text file.
        image_ids: ids to import, in the order of the output rows.
        out_path: the feature file to write (atomically).
        dtype: "float16" or "float32".
        backbone: the spec to record; defaults to VGG-16 ImageNet fc7 of width D,
            the closest backbone predict can run on new images.

    Returns:
        The ``ExtractionResult``; ids missing from the map are in ``skipped``.

    Raises:
        VQAError: missing ``feats``, a wrong shape, or a bad id-map line.
    """
    dtype = _check_dtype(dtype)
    mat_path, id_map_path = Path(mat_path), Path(id_map_path)
    columns = _read_id_map(id_map_path)
    image_ids = np.array([int(i) for i in image_ids], dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to import_mat_features must be unique")

    with _open_mat_feats(mat_path) as (num_images, feature_dim, column_of_row):
        for image_id, (column, line_number) in columns.items():
            if column >= num_images:
                raise VQAError(f"id map {id_map_path} line {line_number} points image {image_id} at column {column}, "
                               f"but {mat_path} has only {num_images} columns; use the id map made with that file.")
        state = np.array([_DONE if int(i) in columns else _SKIPPED for i in image_ids], dtype=np.int8)
        skipped = {int(i): f"not in id map {id_map_path.name}" for i in image_ids if int(i) not in columns}
        wanted = [columns[int(i)][0] for i in image_ids if int(i) in columns]
        rows = np.zeros((len(image_ids), feature_dim), dtype=dtype)
        rows[state == _DONE] = column_of_row(wanted)
    spec = backbone or BackboneSpec(kind="vgg16", weights="imagenet", image_size=VGG16_IMAGE_SIZE,
                                    feature_dim=feature_dim)
    if spec.feature_dim != feature_dim:
        raise VQAError(f"{mat_path} holds {feature_dim}-d features but the backbone spec says {spec.feature_dim}; "
                       "pass a matching backbone.")
    out_path = Path(out_path)
    kept = _write_feature_file(out_path, image_ids, state, rows, spec.to_json(), dtype, skipped,
                               extra_attrs={"source": str(mat_path.resolve())})
    return ExtractionResult(out_path, kept, skipped, computed=len(kept))


def _read_id_map(path: Path) -> dict[int, tuple[int, int]]:
    """image id -> (column, line number) from ``"<coco image id> <column>"`` lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise VQAError(f"id map {path} does not exist; pass the coco_vgg_IDMap.txt that came with the .mat file.") from None
    except UnicodeDecodeError:
        raise VQAError(f"id map {path} is not a text file of '<coco image id> <column>' lines.") from None
    columns: dict[int, tuple[int, int]] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            image_id, column = int(fields[0]), int(fields[1])
            if column < 0:
                raise ValueError
        except ValueError:
            raise VQAError(f"id map {path} line {line_number} is {line!r}, not '<coco image id> <column>'; "
                           "fix or replace the file.") from None
        if image_id in columns:
            raise VQAError(f"id map {path} line {line_number} maps image {image_id} again "
                           f"(first on line {columns[image_id][1]}); fix or replace the file.")
        columns[image_id] = (column, line_number)
    return columns


@contextlib.contextmanager
def _open_mat_feats(path: Path) -> Iterator[tuple[int, int, Callable[[list[int]], np.ndarray]]]:
    """Yield (N, D, take) for the 'feats' (D x N) of a MATLAB v5 or v7.3 file.

    ``take(columns)`` returns float32 (len(columns), D): the features of those columns.
    A v7.3 file stays open (rows are read on demand), so the 2 GB COCO file need
    not fit in memory twice.
    """
    import h5py
    import scipy.io

    if not path.is_file():
        raise VQAError(f"feature file {path} does not exist; pass the vgg_feats.mat to import.")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            feats = f.get("feats")
            if not isinstance(feats, h5py.Dataset):
                raise VQAError(f"{path} has no variable 'feats' (it has {sorted(f.keys())}); "
                               "pass a neuraltalk-style vgg_feats.mat.")
            if feats.ndim != 2:
                raise VQAError(f"'feats' in {path} has shape {feats.shape}; expected a 2-D (D x N) matrix.")
            num_images, feature_dim = feats.shape  # MATLAB's column-major D x N reads as N x D in HDF5

            def take(columns: list[int]) -> np.ndarray:
                if not columns:
                    return np.zeros((0, feature_dim), dtype=np.float32)
                unique, inverse = np.unique(columns, return_inverse=True)
                return np.asarray(feats[unique.tolist()], dtype=np.float32)[inverse]

            yield num_images, feature_dim, take
        return
    try:
        contents = scipy.io.loadmat(path, variable_names=["feats"])
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError, ... for bad files
        raise VQAError(f"{path} is not a readable MATLAB file ({_brief(error)}); "
                       "pass a neuraltalk-style vgg_feats.mat.") from None
    feats = contents.get("feats")
    if feats is None:
        names = sorted(name for name, _, _ in scipy.io.whosmat(path))
        raise VQAError(f"{path} has no variable 'feats' (it has {names}); pass a neuraltalk-style vgg_feats.mat.")
    if not isinstance(feats, np.ndarray) or feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise VQAError(f"'feats' in {path} has shape {getattr(feats, 'shape', None)}; "
                       "expected a 2-D numeric (D x N) matrix.")
    feature_dim, num_images = feats.shape
    yield num_images, feature_dim, lambda columns: feats[:, columns].T.astype(np.float32)
