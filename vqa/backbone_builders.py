"""The Keras models behind the image backbones: VGG-16 and saved ``.keras`` feature models.

Each builder returns a ``BuiltModel``: one Keras model whose outputs are a dict,
``"features"`` float (batch, D) and/or ``"grid"`` float (batch, H, W, C), so an image
goes through the network once whatever it gives; plus the preprocessing and the shapes
that ``vqa.backbone.BackboneSpec`` records. ``vqa.backbone`` is the public face.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vqa.errors import VQAError, brief

VGG16_IMAGE_SIZE = (224, 224)
VGG16_FEATURE_DIM = 4096
VGG16_FEATURE_LAYER = "fc2"  # "fc7" in the Caffe naming the VQA papers use
VGG16_GRID_LAYER = "block5_pool"  # 7 x 7 x 512 at 224 px, 14 x 14 x 512 at 448 px
VGG16_MIN_IMAGE_SIZE = 32  # five 2 x 2 poolings
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
AUTO_GRID_LAYER = "auto"  # the default grid layer: block5_pool for VGG-16, the last 4-D layer of a .keras model

Preprocess = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BuiltModel:
    """A backbone's model and what it gives.

    Attributes:
        model: Keras model from preprocessed images to a dict with "features" and/or "grid".
        preprocess: uint8 (n, H, W, 3) -> the model's input.
        image_size: (H, W) of its input images.
        feature_dim: D of "features"; 0 when it gives no feature vector.
        grid_layer: the layer "grid" comes from; "" when it gives no grid.
        grid_shape: (H, W, C) of "grid", or None.
    """

    model: Any
    preprocess: Preprocess
    image_size: tuple[int, int]
    feature_dim: int
    grid_layer: str = ""
    grid_shape: tuple[int, int, int] | None = None


def vgg16_model(weights: str, seed: int = 0, image_size: tuple[int, int] | None = None,
                grid_layer: str | None = None, features: bool = True) -> BuiltModel:
    """VGG-16 giving fc7 (224 x 224 input only) and/or the output of a convolutional layer.

    The weights always load into the whole 224-px network (one weights file serves every
    size); another image size gets the same convolutional weights in a network without
    the fully connected layers, which is what takes any size.

    Args:
        weights: "imagenet", "none" (random, from ``seed``) or a VGG-16 weights file.
        seed: seeds the "none" weights.
        image_size: (H, W); None for 224 x 224.
        grid_layer: None for no grid; "" or "auto" for block5_pool; else a layer name.
        features: whether to give fc7.

    Raises:
        VQAError: fc7 asked at another size than 224, a size below 32, an unknown layer,
            or weights that cannot be downloaded or loaded.
    """
    import keras

    size = tuple(int(n) for n in image_size) if image_size else VGG16_IMAGE_SIZE
    if features and size != VGG16_IMAGE_SIZE:
        raise VQAError(f"VGG-16 gives fc7 features for 224 x 224 images only (its fully connected layers fix the "
                       f"size), not {size[0]} x {size[1]}; pass --features grid for a grid at that size, or drop "
                       "--image-size.")
    if min(size) < VGG16_MIN_IMAGE_SIZE:
        raise VQAError(f"VGG-16 needs images of at least 32 x 32, not {size[0]} x {size[1]}; pass a larger "
                       "--image-size.")
    if not features and grid_layer is None:
        raise ValueError("a backbone must give features, a grid or both")
    vgg = _vgg16_with_weights(weights, seed)
    network = vgg
    if size != VGG16_IMAGE_SIZE:
        network = keras.applications.VGG16(include_top=False, weights=None, input_shape=(*size, 3))
        for layer in network.layers:
            if layer.weights:
                layer.set_weights(vgg.get_layer(layer.name).get_weights())
    outputs, grid = {}, (None, "", None)
    if features:
        outputs["features"] = vgg.get_layer(VGG16_FEATURE_LAYER).output
    if grid_layer is not None:
        name = VGG16_GRID_LAYER if grid_layer in ("", AUTO_GRID_LAYER) else grid_layer
        grid = _grid_output(network, name, "VGG-16")
        outputs["grid"] = grid[0]
    model = keras.Model(network.inputs, outputs, name="vgg16_backbone")
    return BuiltModel(model, _vgg16_preprocess, size, VGG16_FEATURE_DIM if features else 0, grid[1], grid[2])


def keras_file_model(path: Path, image_size: tuple[int, int] | None = None, grid_layer: str | None = None,
                     features: bool = True) -> BuiltModel:
    """A saved .keras feature model (0-255 RGB in, it scales itself): its output and/or a layer's 4-D output.

    Args:
        path: the ``.keras`` file.
        image_size: None, or the (H, W) the model takes (anything else is refused).
        grid_layer: None for no grid; "" or "auto" for the last layer with a 4-D output; else a layer name.
        features: whether to give the model's own output, which must be (batch, D).

    Raises:
        VQAError: the file is missing, does not load in safe mode, or has other shapes than asked.
    """
    import keras

    if not path.is_file():
        raise VQAError(f"backbone model {path} does not exist; pass --weights PATH to a .keras feature model.")
    try:
        loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        if "Lambda" in str(error):
            raise VQAError(f"backbone model {path} holds a Lambda layer, which Keras's safe mode does not load "
                           "(it could run any code): rebuild the model from built-in or registered layers.") from None
        raise VQAError(f"backbone model {path} could not be loaded ({brief(error)}); "
                       "save it again with model.save(PATH.keras).") from None
    input_shape, output_shape = tuple(loaded.input_shape), loaded.output_shape
    if len(input_shape) != 4 or input_shape[3] != 3 or None in input_shape[1:3] or (features and (
            not isinstance(output_shape, tuple) or len(output_shape) != 2 or output_shape[1] is None)):
        raise VQAError(f"backbone model {path} maps {input_shape} -> {output_shape}; a feature model must map "
                       "(batch, H, W, 3) images to (batch, D) features.")
    size = (int(input_shape[1]), int(input_shape[2]))
    if image_size and tuple(int(n) for n in image_size) != size:
        raise VQAError(f"backbone model {path} takes {size[0]} x {size[1]} images, not {image_size[0]} x "
                       f"{image_size[1]}; drop --image-size or pass {size[0]}.")
    if not features and grid_layer is None:
        raise ValueError("a backbone must give features, a grid or both")
    outputs, grid = {}, (None, "", None)
    if features:
        outputs["features"] = loaded.output
    if grid_layer is not None:
        grid = _grid_output(loaded, "" if grid_layer == AUTO_GRID_LAYER else grid_layer, f"backbone model {path}")
        outputs["grid"] = grid[0]
    model = keras.Model(loaded.inputs, outputs, name=f"{loaded.name}_backbone")
    return BuiltModel(model, _scale_free, size, int(output_shape[1]) if features else 0, grid[1], grid[2])


def _grid_output(model, name: str, what: str):
    """(output tensor, layer name, (H, W, C)) of layer ``name`` of ``model``, or of its last 4-D layer for ""."""
    import keras

    def grid_shape(layer) -> tuple | None:
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            return None
        return shape if len(shape) == 4 else None

    grids = [layer for layer in model.layers
             if not isinstance(layer, keras.layers.InputLayer) and grid_shape(layer) is not None]
    choices = ", ".join(layer.name for layer in grids) or "none"
    if not name:
        if not grids:
            raise VQAError(f"{what} has no layer with a 4-D (batch, H, W, C) output to take a grid from; "
                           "pass --features fc7.")
        layer = grids[-1]
    else:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise VQAError(f"{what} has no layer {name!r}; pass --grid-layer with one of its layers with a 4-D "
                           f"output ({choices}).") from None
    shape = grid_shape(layer)
    if shape is None or None in shape[1:]:
        raise VQAError(f"layer {layer.name} of {what} gives no (batch, H, W, C) grid of a fixed size; pass "
                       f"--grid-layer with one of its layers with a 4-D output ({choices}).")
    return layer.output, layer.name, tuple(int(n) for n in shape[1:])


def _vgg16_preprocess(images: np.ndarray) -> np.ndarray:
    import keras

    # Caffe style: RGB -> BGR and ImageNet mean subtraction, no scaling, as the weights were trained.
    return keras.applications.vgg16.preprocess_input(images.astype(np.float32))


def _vgg16_with_weights(weights: str, seed: int):
    """The whole 224-px VGG-16 (with its fully connected layers) holding ``weights``."""
    import keras

    if weights == "imagenet":
        try:
            return keras.applications.VGG16(include_top=True, weights="imagenet")
        except Exception as error:  # Keras raises a bare Exception for a failed download
            reason = brief(str(error).rsplit(" -- ", 1)[-1])
            raise VQAError(
                f"the VGG-16 ImageNet weights are not in Keras's cache and could not be downloaded ({reason}): "
                f"copy {IMAGENET_WEIGHTS_FILE} to {_keras_cache() / 'models' / IMAGENET_WEIGHTS_FILE} "
                "or pass --weights PATH to a VGG-16 weights file."
            ) from None
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    if weights == "none":
        _initialise_deterministically(vgg, seed)
        return vgg
    try:
        vgg.load_weights(weights)
    except Exception as error:  # h5py, ValueError for mismatched layers, ...
        raise VQAError(f"VGG-16 weights file {weights} could not be loaded ({brief(error)}); "
                       "pass a weights file saved from keras.applications.VGG16(include_top=True).") from None
    return vgg


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
