"""Shared fixtures: the real VQA v2 sample, a stand-in backbone and stand-in word vectors.

Builders of raw data, OUT and RUN live in ``helpers.py``.
"""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("VQA_NO_PROGRESS", "1")

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqa_real_sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real VQA v2 / COCO sample beside the checkout (see its MANIFEST.txt)."""
    if not (REAL_SAMPLE / "MANIFEST.txt").exists():
        pytest.skip(f"real VQA v2 sample not found at {REAL_SAMPLE} (it lives in ../shared beside the checkout)")
    return REAL_SAMPLE


@pytest.fixture
def real_sample_official_layout(real_sample, tmp_path) -> Path:
    """The real sample laid out as the official release unpacks: JSON at the top, images per folder."""
    root = tmp_path / "raw"
    root.mkdir()
    for split in ("train2014", "val2014"):
        for path in (real_sample / split).glob("*.json"):
            shutil.copy(path, root / path.name)
        (root / split).mkdir()
    for image in (real_sample / "images").glob("*.jpg"):
        folder = image.name.split("_")[1]
        shutil.copy(image, root / folder / image.name)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A stand-in image backbone: an untrained 32x32 CNN with 8-d output, saved as .keras."""
    import keras

    keras.utils.set_random_seed(0)
    images = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(8, name="features")(x)
    path = tmp_path_factory.mktemp("backbone") / "tiny_backbone.keras"
    keras.Model(images, features).save(path)
    return path


@pytest.fixture(scope="session")
def vectors_factory(tmp_path_factory):
    """Makes stand-in spaCy pipelines with pseudo-random 300-d vectors for given words."""
    from vqa import vectors

    def make(words, name="vectors"):
        return vectors.make_vectors_pipeline(sorted(set(words)), tmp_path_factory.mktemp(name) / "pipeline")

    return make
