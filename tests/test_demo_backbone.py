"""The demo's stand-in image backbone: the saved feature extractor and what its features carry."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from vqa.demo import backbone as demo_backbone
from vqa.demo import data as demo_data
from vqa.errors import VQAError

TINY_EPOCHS = 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_data")
    demo_data.write_demo_dataset(out, train_images=60, val_images=20, seed=1)
    return out


@pytest.fixture(scope="module")
def tiny_backbone(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("backbone") / "backbone.keras"
    report = demo_backbone.train_demo_backbone(tiny_data, path, seed=5, epochs=TINY_EPOCHS, verbose=False)
    return path, report


def features(path: Path, images: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(path, safe_mode=True)
    return np.asarray(model.predict(images.astype("float32"), verbose=0))


def test_saved_extractor_loads_safely_and_maps_images_to_feature_vectors(tiny_data, tiny_backbone):
    path, report = tiny_backbone
    model = keras.saving.load_model(path, safe_mode=True)
    size = demo_data.IMAGE_SIZE
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, demo_backbone.FEATURE_DIM)
    layer_types = {type(layer).__name__ for layer in model.layers}
    assert "Rescaling" in layer_types and "Lambda" not in layer_types
    _, images, _ = demo_backbone.load_split_images(tiny_data, "val2014")
    out = np.asarray(model.predict(images.astype("float32"), verbose=0))
    assert out.shape == (len(images), demo_backbone.FEATURE_DIM) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not list(path.parent.glob(".*tmp*"))  # the atomic write left no temporary file


def test_report_gives_held_out_accuracy_per_label(tiny_backbone):
    path, report = tiny_backbone
    assert report["out_path"] == str(path)
    assert (report["epochs"], report["train_images"], report["val_images"]) == (TINY_EPOCHS, 60, 20)
    assert report["image_size"] == demo_data.IMAGE_SIZE
    accuracy, baseline = report["heldout_accuracy"], report["heldout_baseline"]
    assert "presence/red circle" in accuracy and "count/triangle" in accuracy and "count/objects" in accuracy
    assert set(accuracy) >= set(baseline) and len(accuracy) >= 15 + 3 + 5 + 1
    assert all(0.0 <= value <= 1.0 for value in [*accuracy.values(), *baseline.values()])


def test_same_seed_gives_the_same_features(tiny_data, tiny_backbone, tmp_path):
    path, _ = tiny_backbone
    again = tmp_path / "again.keras"
    demo_backbone.train_demo_backbone(tiny_data, again, seed=5, epochs=TINY_EPOCHS, verbose=False)
    _, images, _ = demo_backbone.load_split_images(tiny_data, "val2014")
    np.testing.assert_allclose(features(path, images), features(again, images), rtol=1e-5, atol=1e-5)


def test_quadrant_shuffling_keeps_every_object_and_its_label(tiny_data):
    _, images, scenes = demo_backbone.load_split_images(tiny_data, "train2014")
    targets = demo_backbone._scene_targets(scenes)
    batches = demo_backbone._ShuffledQuadrants(images, targets, batch_size=16, seed=0)
    batch, batch_targets = batches[0]
    rows = batches.order[:16]
    assert batch.shape == (16, *images.shape[1:]) and batch.dtype == np.float32
    half = images.shape[1] // 2

    def quadrant_sums(image: np.ndarray) -> list[float]:
        blocks = [image[:half, :half], image[:half, half:], image[half:, :half], image[half:, half:]]
        return sorted(float(block.astype(np.float64).sum()) for block in blocks)

    for augmented, row in zip(batch, rows):
        assert quadrant_sums(augmented) == quadrant_sums(images[row])
    assert not np.array_equal(batch, images[rows].astype("float32"))
    for name, target in batch_targets.items():
        np.testing.assert_array_equal(target, targets[name][rows])


def test_rejects_an_output_path_keras_cannot_write(tiny_data, tmp_path):
    with pytest.raises(VQAError, match=r"\.keras"):
        demo_backbone.train_demo_backbone(tiny_data, tmp_path / "backbone.h5", epochs=1, verbose=False)


def test_missing_scene_labels_name_the_file(tmp_path):
    with pytest.raises(VQAError, match="demo_scenes.json"):
        demo_backbone.train_demo_backbone(tmp_path, tmp_path / "backbone.keras", epochs=1, verbose=False)


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                          test_features: np.ndarray, test_labels: np.ndarray) -> np.ndarray:
    """Ridge regression onto 0/1 labels, thresholded at 0.5: accuracy per label column."""
    mean, scale = train_features.mean(0), train_features.std(0) + 1e-6

    def design(x: np.ndarray) -> np.ndarray:
        return np.hstack([(x - mean) / scale, np.ones((len(x), 1))])

    a = design(train_features)
    weights = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ train_labels)
    return ((design(test_features) @ weights > 0.5) == test_labels).mean(0)


@pytest.mark.slow
@pytest.mark.heavy
def test_training_gives_features_that_tell_which_objects_are_there(tmp_path):
    # Half of the demo's training (make demo runs the full default and checks the end result).
    data_dir = tmp_path / "data"
    demo_data.write_demo_dataset(data_dir, train_images=300, val_images=100)
    path = tmp_path / "backbone.keras"
    report = demo_backbone.train_demo_backbone(data_dir, path, epochs=30, verbose=False)

    _, train_images, train_scenes = demo_backbone.load_split_images(data_dir, "train2014")
    _, val_images, val_scenes = demo_backbone.load_split_images(data_dir, "val2014")
    train_presence = demo_backbone._scene_targets(train_scenes)["kind_counts"] > 0
    val_presence = demo_backbone._scene_targets(val_scenes)["kind_counts"] > 0
    probe = linear_probe_accuracy(features(path, train_images), train_presence,
                                  features(path, val_images), val_presence)
    always_absent = 1.0 - val_presence.mean(0)
    assert probe.mean() >= always_absent.mean() + 0.06, (probe.mean(), always_absent.mean())
    assert (probe > always_absent).mean() >= 0.8
    accuracy = report["heldout_accuracy"]
    assert np.mean([accuracy[f"color of/{shape}"] for shape in demo_data.SHAPES]) > 0.6
