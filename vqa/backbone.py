"""Image backbones, and the description of one that a preprocessed or run folder keeps.

A backbone maps uint8 RGB images (n, H, W, 3) to features (n, D); its preprocessing
lives with the model, so feature extraction and predict cannot disagree about it.
Kinds (``BackboneSpec.kind``):
- ``vgg16``: Keras's VGG-16 up to ``fc2`` (the fc7 layer of the VQA papers,
  4096-d, 224x224 input, caffe-style ``preprocess_input``), with ImageNet
  weights, seeded random weights ("none") or a weights file.
- ``keras``: any saved ``.keras`` feature model taking 0-255 RGB images and
  scaling them itself (the demo's small stand-in).
- ``mat``: features imported from a neuraltalk ``.mat`` file; there is no model,
  so such a folder cannot describe a new image.
- ``import``: grid features imported from another project's HDF5 file
  (``vqa.grid_features.import_pytorch_vqa``); no model either.

Owns, in OUT and RUN, ``backbone.json`` (the ``BackboneSpec`` as JSON) and, for a
``keras`` backbone, ``backbone.keras`` (a copy of its model file).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vqa.errors import VQAError, brief
from vqa.storage import atomic_path, read_json, write_json

SPEC_FILENAME = "backbone.json"
MODEL_FILENAME = "backbone.keras"
KINDS = ("vgg16", "keras", "mat", "import")
IMPORTED_KINDS = ("mat", "import")  # features made elsewhere: no model, no image size

VGG16_IMAGE_SIZE = (224, 224)
VGG16_FEATURE_DIM = 4096
VGG16_FEATURE_LAYER = "fc2"  # "fc7" in the Caffe naming the VQA papers use
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"

# What decides the features a backbone gives: a field added by a later vqa must not count.
_FEATURE_DEFINING = ("kind", "weights", "image_size", "feature_dim", "seed")

Preprocess = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BackboneSpec:
    """What it takes to rebuild a backbone: saved with the features and the model.

    Attributes:
        kind: "vgg16", "keras" (a saved ``.keras`` feature model), "mat"
            (features imported from a .mat file: no model) or "import" (grid
            features imported from an HDF5 file: no model).
        weights: for vgg16 "imagenet", "none" (random, seeded) or a weights file
            path; for keras the ``.keras`` file path; for mat and import the source file.
        image_size: (H, W) the images are resized to; None for mat and import.
        feature_dim: D, the feature width.
        seed: seeds the random weights of vgg16 "none".
    """

    kind: str
    weights: str
    image_size: tuple[int, int] | None
    feature_dim: int
    seed: int = 0

    @classmethod
    def for_mat(cls, mat_path: str | os.PathLike, feature_dim: int) -> "BackboneSpec":
        """The spec of features imported from the .mat file ``mat_path``: D = ``feature_dim``, no model."""
        return cls(kind="mat", weights=str(mat_path), image_size=None, feature_dim=int(feature_dim))

    @classmethod
    def for_import(cls, source_path: str | os.PathLike, feature_dim: int) -> "BackboneSpec":
        """The spec of grid features imported from ``source_path`` (C = ``feature_dim`` channels), no model."""
        return cls(kind="import", weights=str(source_path), image_size=None, feature_dim=int(feature_dim))

    @property
    def has_model(self) -> bool:
        """Whether a model can be rebuilt from the spec (not for imported features: mat, import)."""
        return self.kind not in IMPORTED_KINDS

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (image_size as a list, or None)."""
        return {"kind": self.kind, "weights": self.weights,
                "image_size": None if self.image_size is None else list(self.image_size),
                "feature_dim": self.feature_dim, "seed": self.seed}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in feature files."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BackboneSpec":
        """Inverse of ``to_dict`` (a mat or import spec may lack ``image_size`` and ``seed``).

        Raises:
            VQAError: a field is missing or has the wrong type, or the kind is unknown.
        """
        if not isinstance(data, Mapping):
            raise VQAError(f"backbone description {data!r} is not a JSON object; run preprocessing again.")
        kind = str(data.get("kind"))
        if kind not in KINDS:
            raise VQAError(f"backbone kind {kind!r} is unknown (expected vgg16, keras, mat or import); "
                           "run preprocessing again.")
        try:
            size = data.get("image_size") if kind in IMPORTED_KINDS else data["image_size"]
            spec = cls(kind=kind, weights=str(data["weights"]),
                       image_size=None if size is None else (int(size[0]), int(size[1])),
                       feature_dim=int(data["feature_dim"]), seed=int(data.get("seed", 0)))
        except (KeyError, TypeError, ValueError, IndexError):
            raise VQAError(f"backbone description {dict(data)!r} is incomplete; run preprocessing again.") from None
        return spec


def same_features(a: BackboneSpec, b: BackboneSpec) -> bool:
    """Whether two specs give the same features (kind, weights, image_size, feature_dim and seed agree)."""
    return [getattr(a, name) for name in _FEATURE_DEFINING] == [getattr(b, name) for name in _FEATURE_DEFINING]


class Backbone:
    """A model mapping uint8 RGB images (n, H, W, 3) to features (n, D).

    Args:
        spec: what the backbone is (a kind with a model, not "mat").
        model: a Keras model from preprocessed images to (n, D).
        preprocess: uint8 (n, H, W, 3) -> the model's input.
    """

    def __init__(self, spec: BackboneSpec, model, preprocess: Preprocess):
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
            images: uint8 (n, H, W, 3) RGB, as ``vqa.images.load_image`` returns them.

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
                (e.g. the copy a preprocessed folder keeps); defaults to ``spec.weights``.

        Raises:
            VQAError: the spec has no model (mat), the weights cannot be found, or
                they give other shapes than the spec.
        """
        if not spec.has_model:
            raise VQAError(f"backbone {spec.weights} is a file of imported image features, not a model, so it cannot "
                           "describe a new image; preprocess with --weights imagenet for a backbone that can.")
        if spec.kind == "keras":
            built, model, preprocess = _keras_file_model(Path(keras_path if keras_path is not None else spec.weights))
        else:
            built, model, preprocess = _vgg16_model(spec.weights, seed=spec.seed if spec.weights == "none" else 0)
        if (built.image_size, built.feature_dim) != (tuple(spec.image_size), spec.feature_dim):
            raise VQAError(
                f"backbone {spec.weights} gives {built.image_size} images -> {built.feature_dim} features "
                f"but the saved spec says {tuple(spec.image_size)} -> {spec.feature_dim}; "
                "use the backbone the features were extracted with."
            )
        return cls(spec, model, preprocess)


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
        return Backbone(*_vgg16_model(weights, seed=seed))
    path = Path(weights)
    if not path.is_file():
        raise VQAError(f"backbone weights {path} do not exist; pass --weights imagenet, none, "
                       "a VGG-16 .h5/.weights.h5 file or a .keras feature model.")
    if path.suffix == ".keras":
        return Backbone(*_keras_file_model(path))
    if path.suffix in (".h5", ".hdf5"):
        return Backbone(*_vgg16_model(str(path.resolve())))
    raise VQAError(f"backbone weights {path} are neither a VGG-16 .h5/.weights.h5 file nor a .keras feature model; "
                   "pass one of those, imagenet or none.")


# --- the backbone files of a folder ----------------------------------------------------------------


def write_backbone(folder: str | os.PathLike, spec: BackboneSpec,
                   keras_source: str | os.PathLike | None = None) -> None:
    """Record ``spec`` as the backbone of a preprocessed or run folder, atomically.

    For a ``keras`` spec the model file (``keras_source``, default ``spec.weights``) is
    copied into the folder first, so the description never names a model that is not
    there; for other kinds a model copy left from an earlier backbone is removed.
    """
    folder = Path(folder)
    model_path = folder / MODEL_FILENAME
    if spec.kind == "keras":
        source = Path(keras_source if keras_source is not None else spec.weights)
        if not source.is_file():
            raise VQAError(f"backbone model {source} does not exist; pass --weights PATH to a .keras feature model.")
        if not (model_path.exists() and os.path.samefile(source, model_path)):
            with atomic_path(model_path) as tmp:
                shutil.copyfile(source, tmp)
    else:
        model_path.unlink(missing_ok=True)
    write_json(folder / SPEC_FILENAME, spec.to_dict())


def read_backbone(folder: str | os.PathLike) -> BackboneSpec | None:
    """The backbone a folder records, or None when it records none.

    Raises:
        VQAError: the description is not valid JSON or not a backbone spec.
    """
    path = Path(folder) / SPEC_FILENAME
    if not path.exists():
        return None
    data = read_json(path, "backbone description")
    if not isinstance(data, dict):
        raise VQAError(f"{path} is not a backbone description (a JSON object); copy it again from the "
                       "preprocessed folder or run preprocessing again.")
    return BackboneSpec.from_dict(data)


def copy_backbone(src_folder: str | os.PathLike, dst_folder: str | os.PathLike) -> None:
    """Give ``dst_folder`` the backbone of ``src_folder`` (nothing when it records none)."""
    spec = read_backbone(src_folder)
    if spec is not None:
        model_path = Path(src_folder) / MODEL_FILENAME
        write_backbone(dst_folder, spec, model_path if model_path.is_file() else None)


def check_backbone(folder: str | os.PathLike) -> BackboneSpec:
    """The folder's backbone spec, checked to have a model, without building it.

    Raises:
        VQAError: naming the folder, when it records no backbone or a "mat" one.
    """
    folder = Path(folder)
    spec = read_backbone(folder)
    if spec is None:
        raise VQAError(f"{folder / SPEC_FILENAME} is missing, so {folder} cannot turn a new image into features; "
                       f"copy {SPEC_FILENAME} (and {MODEL_FILENAME}) from its preprocessed folder.")
    if not spec.has_model:
        raise VQAError(_no_backbone_message(folder, spec))
    return spec


def folder_backbone(folder: str | os.PathLike) -> Backbone:
    """Rebuild the backbone a preprocessed or run folder records (its model copy for a ``keras`` one).

    Raises:
        VQAError: naming the folder, when it records no backbone or a "mat" one; or as ``Backbone.from_spec``.
    """
    spec = check_backbone(folder)
    model_path = Path(folder) / MODEL_FILENAME
    return Backbone.from_spec(spec, model_path if spec.kind == "keras" and model_path.is_file() else None)


def _no_backbone_message(folder: str | os.PathLike, spec: BackboneSpec) -> str:
    """The sentence for a folder whose features were imported: no model describes a new image."""
    if spec.kind == "import":
        return (f"{folder} was trained on grid features imported from {spec.weights}, so it has no image backbone "
                "to describe a new image; answer with `vqa evaluate` on imported features of your images, or "
                "preprocess with --weights imagenet and train a run that reads images.")
    return (
        f"{folder} was trained on image features imported from a .mat file, so it has no image backbone to "
        "describe a new image; instead put your images' VGG-16 fc7 features (from the network that made the .mat "
        "file) in a .mat file with an id map, import them with `vqa preprocess --features-mat FILE --id-map MAP` "
        "and answer with `vqa evaluate`, or preprocess with --weights imagenet and train a run that reads images."
    )


# --- builders --------------------------------------------------------------------------------------


def _vgg16_preprocess(images: np.ndarray) -> np.ndarray:
    import keras

    # Caffe style: RGB -> BGR and ImageNet mean subtraction, no scaling, as the weights were trained.
    return keras.applications.vgg16.preprocess_input(images.astype(np.float32))


def _vgg16_model(weights: str, seed: int = 0) -> tuple[BackboneSpec, Any, Preprocess]:
    """VGG-16 up to fc7: (spec, model, preprocess), the ``Backbone`` constructor's arguments."""
    import keras

    if weights == "imagenet":
        try:
            vgg = keras.applications.VGG16(include_top=True, weights="imagenet")
        except Exception as error:  # Keras raises a bare Exception for a failed download
            reason = brief(str(error).rsplit(" -- ", 1)[-1])
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
                raise VQAError(f"VGG-16 weights file {weights} could not be loaded ({brief(error)}); "
                               "pass a weights file saved from keras.applications.VGG16(include_top=True).") from None
    model = keras.Model(vgg.inputs, vgg.get_layer(VGG16_FEATURE_LAYER).output, name="vgg16_fc7")
    spec = BackboneSpec(kind="vgg16", weights=weights, image_size=VGG16_IMAGE_SIZE,
                        feature_dim=VGG16_FEATURE_DIM, seed=seed if weights == "none" else 0)
    return spec, model, _vgg16_preprocess



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


def _scale_free(images: np.ndarray) -> np.ndarray:
    # A .keras feature model scales its own input, so the batch goes in as float 0-255 unchanged.
    return images.astype(np.float32)


def _keras_file_model(path: Path) -> tuple[BackboneSpec, Any, Preprocess]:
    """A saved .keras feature model: (spec, model, preprocess), the ``Backbone`` constructor's arguments."""
    import keras

    if not path.is_file():
        raise VQAError(f"backbone model {path} does not exist; pass --weights PATH to a .keras feature model.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        if "Lambda" in str(error):
            raise VQAError(f"backbone model {path} holds a Lambda layer, which Keras's safe mode does not load "
                           "(it could run any code): rebuild the model from built-in or registered layers.") from None
        raise VQAError(f"backbone model {path} could not be loaded ({brief(error)}); "
                       "save it again with model.save(PATH.keras).") from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if (len(input_shape) != 4 or input_shape[3] != 3 or None in input_shape[1:3] or len(output_shape) != 2
            or output_shape[1] is None):
        raise VQAError(f"backbone model {path} maps {input_shape} -> {output_shape}; a feature model must map "
                       "(batch, H, W, 3) images to (batch, D) features.")
    spec = BackboneSpec(kind="keras", weights=str(path.resolve()), image_size=(int(input_shape[1]), int(input_shape[2])),
                        feature_dim=int(output_shape[1]))
    return spec, model, _scale_free
