"""Image backbones, and the description of one that a preprocessed or run folder keeps.

A backbone maps uint8 RGB images (n, H, W, 3) to features (n, D) and/or a grid
(n, H', W', C), the output of one of its convolutional layers, both from one forward
pass; its preprocessing lives with the model, so feature extraction and predict cannot
disagree about it. Kinds (``BackboneSpec.kind``):
- ``vgg16``: Keras's VGG-16: ``fc2`` (the fc7 layer of the VQA papers, 4096-d,
  224 x 224 input only) and/or a convolutional layer's output (``block5_pool``:
  7 x 7 x 512 at 224 px, 14 x 14 x 512 at 448 px), caffe-style ``preprocess_input``,
  with ImageNet weights, seeded random weights ("none") or a weights file.
- ``keras``: any saved ``.keras`` feature model taking 0-255 RGB images and
  scaling them itself (the demo's small stand-in); its grid is a named layer's 4-D
  output, by default its last one.
- ``mat``: features imported from a neuraltalk ``.mat`` file; there is no model,
  so such a folder cannot describe a new image.
- ``import``: grid features imported from another project's HDF5 file
  (``vqa.grid_import.import_pytorch_vqa``); no model either.

The models are built in ``vqa.backbone_builders``.

Owns, in OUT and RUN, ``backbone.json`` (the ``BackboneSpec`` as JSON) and, for a
``keras`` backbone, ``backbone.keras`` (a copy of its model file).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vqa import backbone_builders as builders
# Re-exported: callers read the VGG-16 constants and the "auto" grid layer from here.
from vqa.backbone_builders import (AUTO_GRID_LAYER, VGG16_FEATURE_DIM, VGG16_GRID_LAYER,  # noqa: F401
                                   VGG16_IMAGE_SIZE, Preprocess)
from vqa.errors import VQAError
from vqa.storage import atomic_path, read_json, write_json

SPEC_FILENAME = "backbone.json"
MODEL_FILENAME = "backbone.keras"
KINDS = ("vgg16", "keras", "mat", "import")
IMPORTED_KINDS = ("mat", "import")  # features made elsewhere: no model, no image size

# What decides the features a backbone gives: a field added by a later vqa must not count.
_FEATURE_DEFINING = ("kind", "weights", "image_size", "feature_dim", "seed", "grid_layer")


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
        feature_dim: D, the feature width; 0 when the backbone gives only a grid
            (VGG-16 at 448 px). For import, the grid's channels.
        seed: seeds the random weights of vgg16 "none".
        grid_layer: the layer whose 4-D output is the grid ("block5_pool"); "" for none.
        grid_shape: (H, W, C) of that output, or None.
    """

    kind: str
    weights: str
    image_size: tuple[int, int] | None
    feature_dim: int
    seed: int = 0
    grid_layer: str = ""
    grid_shape: tuple[int, int, int] | None = None

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
        """JSON-able dict (image_size and grid_shape as lists, or None).

        ``grid_layer`` and ``grid_shape`` appear only for a backbone with a grid, so a spec
        without one reads exactly as before they existed: files made then still match.
        """
        data = {"kind": self.kind, "weights": self.weights,
                "image_size": None if self.image_size is None else list(self.image_size),
                "feature_dim": self.feature_dim, "seed": self.seed}
        if self.grid_layer:
            data["grid_layer"] = self.grid_layer
            data["grid_shape"] = None if self.grid_shape is None else list(self.grid_shape)
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in feature files."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BackboneSpec":
        """Inverse of ``to_dict`` (a mat or import spec may lack ``image_size`` and ``seed``; any may lack the grid).

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
            grid_shape = data.get("grid_shape")
            if grid_shape is not None and len(grid_shape) != 3:
                raise ValueError("grid_shape is not (H, W, C)")
            spec = cls(kind=kind, weights=str(data["weights"]),
                       image_size=None if size is None else (int(size[0]), int(size[1])),
                       feature_dim=int(data["feature_dim"]), seed=int(data.get("seed", 0)),
                       grid_layer=str(data.get("grid_layer") or ""),
                       grid_shape=None if grid_shape is None else tuple(int(n) for n in grid_shape))
        except (KeyError, TypeError, ValueError, IndexError):
            raise VQAError(f"backbone description {dict(data)!r} is incomplete; run preprocessing again.") from None
        return spec


def same_features(a: BackboneSpec, b: BackboneSpec) -> bool:
    """Whether two specs give the same features (kind, weights, image_size, feature_dim, seed and grid_layer agree)."""
    return [getattr(a, name) for name in _FEATURE_DEFINING] == [getattr(b, name) for name in _FEATURE_DEFINING]


class Backbone:
    """A model mapping uint8 RGB images (n, H, W, 3) to features (n, D) and/or a grid (n, H', W', C).

    Args:
        spec: what the backbone is (a kind with a model, not "mat" or "import").
        model: a Keras model from preprocessed images to a dict with "features" (n, D)
            when ``spec.feature_dim`` > 0 and "grid" (n, H', W', C) when ``spec.grid_layer`` is set.
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
        """D, the width of a feature row; 0 for a backbone that gives only a grid."""
        return self.spec.feature_dim

    @property
    def grid_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the grid, or None when the backbone gives none."""
        return self.spec.grid_shape if self.spec.grid_layer else None

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """What ``outputs`` gives: "features" -> (D,) and/or "grid" -> (H, W, C)."""
        shapes = {"features": (self.feature_dim,)} if self.feature_dim else {}
        if self.grid_shape is not None:
            shapes["grid"] = tuple(self.grid_shape)
        return shapes

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch through preprocessing and the model, once, for everything the backbone gives.

        Args:
            images: uint8 (n, H, W, 3) RGB, as ``vqa.images.load_image`` returns them.

        Returns:
            "features": float32 (n, D) when ``feature_dim`` > 0; "grid": float32 (n, H', W', C)
            when the spec has a grid layer.
        """
        images = np.asarray(images)
        height, width = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(f"expected uint8 images (n, {height}, {width}, 3), got {images.dtype} {images.shape}")
        shapes = self.output_shapes()
        if len(images) == 0:
            return {name: np.zeros((0, *shape), dtype=np.float32) for name, shape in shapes.items()}
        outputs = self.model.predict_on_batch(self._preprocess(images))
        self.batches_run += 1
        return {name: np.asarray(outputs[name], dtype=np.float32) for name in shapes}

    def features(self, images: np.ndarray) -> np.ndarray:
        """The feature rows of one batch: float32 (n, D) (see ``outputs``).

        Raises:
            VQAError: the backbone gives only a grid.
        """
        if not self.feature_dim:
            raise VQAError(f"backbone {self.spec.weights} at {self.image_size[0]} x {self.image_size[1]} gives only "
                           f"a grid ({self.spec.grid_layer}), no feature vector; use its grid, or preprocess with "
                           "--features fc7 at the backbone's own image size.")
        return self.outputs(images)["features"]

    def grids(self, images: np.ndarray) -> np.ndarray:
        """The grids of one batch: float32 (n, H', W', C) (see ``outputs``).

        Raises:
            VQAError: the backbone has no grid layer.
        """
        if self.grid_shape is None:
            raise VQAError(f"backbone {self.spec.weights} has no grid layer; preprocess with --features grid "
                           "or both for one.")
        return self.outputs(images)["grid"]

    @classmethod
    def from_spec(cls, spec: BackboneSpec, keras_path: str | os.PathLike | None = None) -> "Backbone":
        """Rebuild the backbone a feature file or run was made with, with the same outputs.

        Args:
            spec: the saved spec.
            keras_path: for a ``keras`` spec, where its ``.keras`` file is now
                (e.g. the copy a preprocessed folder keeps); defaults to ``spec.weights``.

        Raises:
            VQAError: the spec has no model (mat, import), the weights cannot be found, or
                they give other shapes than the spec.
        """
        if not spec.has_model:
            raise VQAError(f"backbone {spec.weights} is a file of imported image features, not a model, so it cannot "
                           "describe a new image; preprocess with --weights imagenet for a backbone that can.")
        options = dict(image_size=spec.image_size, grid_layer=spec.grid_layer or None, features=spec.feature_dim > 0)
        if spec.kind == "keras":
            built = builders.keras_file_model(Path(keras_path if keras_path is not None else spec.weights), **options)
        else:
            built = builders.vgg16_model(spec.weights, seed=spec.seed if spec.weights == "none" else 0, **options)
        shapes = (built.image_size, built.feature_dim, built.grid_shape)
        if shapes != (tuple(spec.image_size), spec.feature_dim, spec.grid_shape if spec.grid_layer else None):
            raise VQAError(
                f"backbone {spec.weights} gives {built.image_size} images -> {built.feature_dim} features "
                f"and grid {built.grid_shape} but the saved spec says {tuple(spec.image_size)} -> {spec.feature_dim} "
                f"and {spec.grid_shape}; use the backbone the features were extracted with."
            )
        return cls(spec, built.model, built.preprocess)


def load_backbone(weights: "str | os.PathLike | BackboneSpec", seed: int = 0,
                  image_size: "int | tuple[int, int] | None" = None, grid_layer: str | None = None,
                  features: bool = True) -> Backbone:
    """Build the image backbone named on the command line.

    Args:
        weights: "imagenet" (VGG-16 with ImageNet weights), "none" (VGG-16 with random
            weights fixed by ``seed``), a VGG-16 weights file (``.h5`` / ``.weights.h5``),
            a ``.keras`` feature model (input (H, W, 3) 0-255 RGB, output (D,); it scales
            its input itself), or a ``BackboneSpec`` to rebuild (the other arguments are then unused).
        seed: seeds the "none" weights, so rebuilding gives the same features.
        image_size: N or (H, W) the images are resized to; None or 0 for the backbone's
            own size (224 for VGG-16; a .keras model takes only its own).
        grid_layer: None for no grid; "" or "auto" for the default grid layer
            (block5_pool for VGG-16, the last layer with a 4-D output of a .keras model);
            else that layer's name.
        features: whether the backbone gives its feature vector (fc7 for VGG-16, which
            exists at 224 x 224 only).

    Raises:
        VQAError: the weights cannot be downloaded, found or loaded, or the model cannot
            give what is asked (fc7 at 448 px, an unknown grid layer).
    """
    if isinstance(weights, BackboneSpec):
        return Backbone.from_spec(weights)
    if isinstance(image_size, int):
        image_size = (image_size, image_size) if image_size else None
    options = dict(image_size=image_size, grid_layer=grid_layer, features=features)
    weights = str(weights)
    path = Path(weights)
    if weights in ("imagenet", "none"):
        kind, built = "vgg16", builders.vgg16_model(weights, seed=seed, **options)
    elif not path.is_file():
        raise VQAError(f"backbone weights {path} do not exist; pass --weights imagenet, none, "
                       "a VGG-16 .h5/.weights.h5 file or a .keras feature model.")
    elif path.suffix == ".keras":
        kind, built, weights = "keras", builders.keras_file_model(path, **options), str(path.resolve())
    elif path.suffix in (".h5", ".hdf5"):
        weights = str(path.resolve())
        kind, built = "vgg16", builders.vgg16_model(weights, **options)
    else:
        raise VQAError(f"backbone weights {path} are neither a VGG-16 .h5/.weights.h5 file nor a .keras feature "
                       "model; pass one of those, imagenet or none.")
    spec = BackboneSpec(kind=kind, weights=weights, image_size=built.image_size, feature_dim=built.feature_dim,
                        seed=seed if weights == "none" else 0, grid_layer=built.grid_layer,
                        grid_shape=built.grid_shape)
    return Backbone(spec, built.model, built.preprocess)


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
