"""A small CNN pretrained on the demo's scene labels: the demo's stand-in for ImageNet VGG-16.

The real pipeline describes images with VGG-16 pretrained on ImageNet. Those weights
cannot be downloaded offline, and a VGG-16 with random weights carries no usable
information, so ``make demo`` instead pretrains a small CNN on the scene labels that
``vqa.demo.data`` writes beside its images (``demo_scenes.json``: which coloured
shapes are where) and keeps its penultimate layer as the image features, just as
VGG-16's fc7 layer is kept after ImageNet classification. Only train2014 scenes are
used for training; val2014 scenes measure how well the features generalise.

The training targets are the facts the demo questions ask about, so that the
features carry them linearly: how many objects of each colour-shape kind there are
(which gives presence and the colour of a shape), how many of each shape, how many
of each colour, and how many objects in all. The CNN's last pooling leaves one cell
per scene quadrant (demo scenes put at most one object in each), and training
shuffles and mirrors whole quadrants, so 600 images are enough in about a minute.

Reads: ``<data_dir>/train2014/*.jpg``, ``<data_dir>/val2014/*.jpg``, ``demo_scenes.json``.
Writes: the feature extractor (classifier heads dropped) as one ``.keras`` file that
satisfies the image backbone contract: float input (batch, H, W, 3) holding 0-255 RGB
values, the scaling to 0-1 inside the model (a Rescaling layer), output float32
(batch, feature_dim); it loads with ``keras.saving.load_model(path, safe_mode=True)``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from vqa import layout
from vqa.demo import data as demo_data
from vqa.devices import set_determinism
from vqa.errors import VQAError
from vqa.progress import progress
from vqa.storage import atomic_path

FEATURE_DIM = 256
# Enough gradient steps for the CNN to bind colours to shapes (at 30 epochs it
# still confuses them): 45 epochs of the default 600 train images, about a minute
# on 2 CPU cores, and proportionally fewer epochs of a larger demo set.
_DEFAULT_IMAGES_SEEN = 27_000
_COUNT_CLASSES = demo_data.MAX_OBJECTS + 1  # counts 0..4: four objects, or four of one colour
_CONV_FILTERS = (32, 48, 96, 128)
_LOSS_WEIGHTS = {"kind_counts": 5.0, "shape_counts": 1.0, "color_counts": 1.0, "object_count": 0.5}
_KINDS = [(color, shape) for color in demo_data.COLORS for shape in demo_data.SHAPES]


def build_feature_extractor(image_size: int = demo_data.IMAGE_SIZE, feature_dim: int = FEATURE_DIM) -> keras.Model:
    """The CNN whose output is the image feature vector.

    Args:
        image_size: height and width of the input images.
        feature_dim: length of the feature vector.

    Returns:
        A model mapping ``image`` float32 (batch, image_size, image_size, 3) with
        0-255 values to ``features`` float32 (batch, feature_dim).
    """
    # Layers
    rescale = keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    blocks = []
    for i, filters in enumerate(_CONV_FILTERS, start=1):
        blocks += [
            # Batch normalisation roughly halves the epochs needed; its short momentum
            # lets the inference statistics settle within a minute's training.
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}"),
            keras.layers.BatchNormalization(momentum=0.9, name=f"norm{i}"),
            keras.layers.ReLU(name=f"relu{i}"),
            # The last pooling leaves a 2 x 2 grid, one cell per quadrant of the scene.
            keras.layers.MaxPooling2D(2 if i < len(_CONV_FILTERS) else 4, name=f"pool{i}"),
        ]
    # What each quadrant holds (colour and shape together), with weights shared by quadrants.
    blocks.append(keras.layers.Conv2D(128, 1, activation="relu", name="quadrant_objects"))
    flatten = keras.layers.Flatten(name="flatten")
    features = keras.layers.Dense(feature_dim, activation="relu", name="features")

    # Wiring
    images = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = rescale(images)
    for layer in blocks:
        x = layer(x)
    outputs = features(flatten(x))
    return keras.Model(images, outputs, name="demo_scene_cnn")


def _build_trainer(extractor: keras.Model, dropout: float) -> keras.Model:
    """The extractor plus the scene-label heads it is trained through (not saved)."""
    num_kinds, num_shapes, num_colors = len(_KINDS), len(demo_data.SHAPES), len(demo_data.COLORS)
    x = keras.layers.Dropout(dropout, name="head_dropout")(extractor.output)

    def count_head(name: str, groups: int) -> keras.KerasTensor:
        logits = keras.layers.Dense(groups * _COUNT_CLASSES, name=f"{name}_logits")(x)
        logits = keras.layers.Reshape((groups, _COUNT_CLASSES), name=f"{name}_grouped")(logits)
        return keras.layers.Softmax(name=name)(logits)

    outputs = {
        "kind_counts": count_head("kind_counts", num_kinds),
        "shape_counts": count_head("shape_counts", num_shapes),
        "color_counts": count_head("color_counts", num_colors),
        "object_count": count_head("object_count", 1),
    }
    return keras.Model(extractor.input, outputs, name="demo_scene_trainer")


def _scene_targets(scenes: list[list[dict]]) -> dict[str, np.ndarray]:
    """Scene labels -> int32 count targets, one row per scene, clipped to 0..4."""
    kind_index = {kind: i for i, kind in enumerate(_KINDS)}
    shape_index = {s: i for i, s in enumerate(demo_data.SHAPES)}
    color_index = {c: i for i, c in enumerate(demo_data.COLORS)}
    n = len(scenes)
    targets = {
        "kind_counts": np.zeros((n, len(_KINDS)), np.int32),
        "shape_counts": np.zeros((n, len(shape_index)), np.int32),
        "color_counts": np.zeros((n, len(color_index)), np.int32),
        "object_count": np.zeros((n, 1), np.int32),
    }
    for row, scene in enumerate(scenes):
        for obj in scene:
            targets["kind_counts"][row, kind_index[(obj["color"], obj["shape"])]] += 1
            targets["shape_counts"][row, shape_index[obj["shape"]]] += 1
            targets["color_counts"][row, color_index[obj["color"]]] += 1
            targets["object_count"][row, 0] += 1
    return {name: np.minimum(t, _COUNT_CLASSES - 1) for name, t in targets.items()}


class _ShuffledQuadrants(keras.utils.PyDataset):
    """Train batches with the image quadrants permuted and mirrored at random.

    Demo scenes hold one object per quadrant on a plain background, so moving or
    mirroring whole quadrants gives a new, seamless scene with the same labels:
    hundreds of images become tens of thousands, and the CNN learns what a shape
    looks like rather than where it was. Each batch is drawn from its own seed
    (seed, epoch, batch), so training is reproducible.
    """

    def __init__(self, images: np.ndarray, targets: dict[str, np.ndarray], batch_size: int, seed: int):
        super().__init__()
        self.images, self.targets, self.batch_size, self.seed = images, targets, batch_size, seed
        self.epoch = 0
        self.order = np.random.default_rng([seed, self.epoch]).permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        images = self.images[rows]
        n, size = len(rows), images.shape[1] // 2
        # (n, 4, size, size, 3): quadrants in reading order
        quadrants = np.stack([images[:, :size, :size], images[:, :size, size:],
                              images[:, size:, :size], images[:, size:, size:]], axis=1)
        quadrants = quadrants[np.arange(n)[:, None], np.argsort(rng.random((n, 4)), axis=1)]
        mirrored = rng.random((n, 4)) < 0.5
        quadrants[mirrored] = quadrants[mirrored][:, :, ::-1]
        top = np.concatenate([quadrants[:, 0], quadrants[:, 1]], axis=2)
        bottom = np.concatenate([quadrants[:, 2], quadrants[:, 3]], axis=2)
        batch = np.concatenate([top, bottom], axis=1).astype("float32")
        return batch, {name: target[rows] for name, target in self.targets.items()}

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))


def load_split_images(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, list[list[dict]]]:
    """Read one split's demo images and scene labels.

    Args:
        data_dir: a folder written by ``vqa.demo.data.write_demo_dataset``.
        split: "train2014" or "val2014".

    Returns:
        ``(image_ids int64 (n,), images uint8 (n, H, W, 3), scenes)``, in image id order.
    """
    data_dir = Path(data_dir)
    scenes_by_id = demo_data.read_scenes(data_dir).get(split)
    if not scenes_by_id:
        raise VQAError(f"{data_dir / demo_data.SCENES_FILE} has no {split} scenes; write the demo data "
                       "with `vqa demo-data`.")
    image_ids = sorted(scenes_by_id)
    images = []
    for image_id in progress(image_ids, desc=f"read {split}", unit="img"):
        path = layout.image_path(data_dir, split, image_id)
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (FileNotFoundError, OSError) as e:
            raise VQAError(f"demo image {path} cannot be read ({e}); write the demo data again "
                           "with `vqa demo-data`.") from None
    if len({image.shape for image in images}) != 1:
        raise VQAError(f"the {split} images under {data_dir / split} differ in size; write the demo data "
                       "again with `vqa demo-data`.")
    return np.asarray(image_ids, np.int64), np.stack(images), [scenes_by_id[i] for i in image_ids]


def _heldout_accuracy(predicted: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                      scenes: list[list[dict]]) -> dict[str, float]:
    """Per-label accuracy of the heads on held-out scenes, with names people can read."""
    kind_counts = predicted["kind_counts"].argmax(-1)
    accuracy: dict[str, float] = {}
    for i, (color, shape) in enumerate(_KINDS):
        accuracy[f"presence/{color} {shape}"] = float(
            np.mean((kind_counts[:, i] > 0) == (targets["kind_counts"][:, i] > 0)))
    for name, labels in (("shape_counts", demo_data.SHAPES), ("color_counts", tuple(demo_data.COLORS))):
        counts = predicted[name].argmax(-1)
        for i, label in enumerate(labels):
            accuracy[f"count/{label}"] = float(np.mean(counts[:, i] == targets[name][:, i]))
    accuracy["count/objects"] = float(np.mean(predicted["object_count"].argmax(-1)[:, 0]
                                              == targets["object_count"][:, 0]))
    # "What color is the circle?": the colour whose (colour, circle) kind scores highest,
    # asked only of scenes with exactly one circle.
    present = predicted["kind_counts"][:, :, 1:].sum(-1)
    for shape in demo_data.SHAPES:
        columns = [i for i, kind in enumerate(_KINDS) if kind[1] == shape]
        rows = [r for r, scene in enumerate(scenes) if sum(o["shape"] == shape for o in scene) == 1]
        if rows:
            truth = [list(demo_data.COLORS).index(next(o["color"] for o in scenes[r] if o["shape"] == shape))
                     for r in rows]
            guess = present[np.ix_(rows, columns)].argmax(-1)
            accuracy[f"color of/{shape}"] = float(np.mean(guess == np.asarray(truth)))
    return accuracy


class _EpochBar(keras.callbacks.Callback):
    """One progress bar over the epochs, with the loss, on stderr (stdout stays for results)."""

    def __init__(self, epochs: int, disable: bool | None = None):
        super().__init__()
        self.epochs, self.disable, self.bar = epochs, disable, None

    def on_train_begin(self, logs=None):
        self.bar = progress(total=self.epochs, desc="backbone epochs", unit="epoch", disable=self.disable)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}", refresh=False)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def train_demo_backbone(data_dir: str | os.PathLike, out_path: str | os.PathLike, seed: int = 0,
                        epochs: int | None = None, batch_size: int = 32, learning_rate: float = 2e-3,
                        feature_dim: int = FEATURE_DIM, dropout: float = 0.3, verbose: bool = True) -> dict:
    """Pretrain the demo CNN on scene labels and save its feature extractor.

    This stands in for the ImageNet pretraining of VGG-16 (which needs a download):
    the saved model plays VGG-16's role in feature extraction and prediction.

    Args:
        data_dir: a folder written by ``vqa.demo.data.write_demo_dataset``.
        out_path: where to write the feature extractor; must end in ``.keras``.
        seed: seed for weights, shuffling and dropout.
        epochs: passes over train2014; None trains for a fixed number of images
            seen (45 epochs of 600 images), about a minute on 2 CPU cores.
        batch_size: images per gradient step.
        learning_rate: Adam's initial learning rate (cosine decay to 0).
        feature_dim: length of the feature vector.
        dropout: dropout between the features and the heads, so no single feature
            unit carries a label alone.
        verbose: show a progress bar over the epochs (``VQA_NO_PROGRESS=1`` hides it too).

    Returns:
        ``{"out_path", "image_size", "feature_dim", "epochs", "train_images",
        "val_images", "seconds", "final_loss", "heldout_accuracy": {label: acc},
        "heldout_baseline": {label: acc of always answering the most common train
        value}}``; the held-out numbers are on val2014 scenes, empty when the
        folder has none.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".keras":
        raise VQAError(f"backbone file {out_path} must end in .keras (Keras saves its models under that suffix).")
    start = time.perf_counter()
    set_determinism(seed)  # the same weights on every rerun, GPU included
    _, train_images, train_scenes = load_split_images(data_dir, "train2014")
    train_targets = _scene_targets(train_scenes)
    if epochs is None:
        epochs = max(1, math.ceil(_DEFAULT_IMAGES_SEEN / len(train_images)))
    image_size = train_images.shape[1]

    extractor = build_feature_extractor(image_size, feature_dim)
    trainer = _build_trainer(extractor, dropout)
    trainer.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=epochs * math.ceil(len(train_images) / batch_size))),
        loss={name: "sparse_categorical_crossentropy" for name in train_targets},
        loss_weights=_LOSS_WEIGHTS,
    )
    history = trainer.fit(
        _ShuffledQuadrants(train_images, train_targets, batch_size, seed), epochs=epochs, verbose=0,
        callbacks=[_EpochBar(epochs, disable=not verbose or None)],
    )

    with atomic_path(out_path) as tmp:
        extractor.save(tmp)

    heldout, baseline, val_count = {}, {}, 0
    if demo_data.read_scenes(data_dir).get("val2014"):
        _, val_images, val_scenes = load_split_images(data_dir, "val2014")
        val_count = len(val_images)
        val_targets = _scene_targets(val_scenes)
        predicted = trainer.predict(val_images.astype("float32"), batch_size=256, verbose=0)
        heldout = _heldout_accuracy(predicted, val_targets, val_scenes)
        baseline = _majority_baseline(train_targets, val_targets, val_scenes)
    return {
        "out_path": str(out_path),
        "image_size": int(image_size),
        "feature_dim": int(feature_dim),
        "epochs": int(epochs),
        "train_images": int(len(train_images)),
        "val_images": int(val_count),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(history.history["loss"][-1]),
        "heldout_accuracy": heldout,
        "heldout_baseline": baseline,
    }


def _majority_baseline(train_targets: dict[str, np.ndarray], val_targets: dict[str, np.ndarray],
                       val_scenes: list[list[dict]]) -> dict[str, float]:
    """The same labels predicted by a blind guess: each head's most common train value."""
    def one_hot_majority(name: str, n: int) -> np.ndarray:
        columns = train_targets[name].shape[1]
        guess = np.zeros((n, columns, _COUNT_CLASSES), np.float32)
        for column in range(columns):
            most_common = np.bincount(train_targets[name][:, column], minlength=_COUNT_CLASSES).argmax()
            guess[:, column, most_common] = 1.0
        return guess

    n = len(val_scenes)
    blind = {name: one_hot_majority(name, n) for name in train_targets}
    return _heldout_accuracy(blind, val_targets, val_scenes)
