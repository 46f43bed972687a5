"""Runs on imported features alone, through the CLI: bottom-up regions (a peteanderson80 TSV) or a
pytorch-vqa grid file, with the VQA v2 JSON and no image, no fc7 and no --weights.

The stand-ins are named as such: the demo scenes' region features come from their labels
(``vqa.demo.label_regions``, not a detector), the word vectors from a generated spaCy pipeline.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from vqa.cli import main
from vqa.demo import data as demo_data
from vqa.demo.label_regions import write_label_regions
from vqa.names import H5_IMAGE_IDS

pytestmark = pytest.mark.slow
TINY = ["--set", "model.lstm_units=8", "--set", "model.lstm_layers=1", "--set", "model.hidden_units=16",
        "--set", "model.fusion_units=16", "--set", "train.min_batches=0", "--set", "train.batch_size=32"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, vectors_factory):
    """The demo's JSON with its images deleted, its stand-in regions as two TSV parts, and a grid file."""
    from vqa import text

    root = tmp_path_factory.mktemp("imported")
    raw = root / "raw"
    demo_data.write_demo_dataset(raw, train_images=24, val_images=10, seed=5)
    write_label_regions(raw, root / "regions", dim=12)
    grid_file = root / "grids.h5"
    ids = [int(i) for split in demo_data.SPLITS for i in demo_data.read_scenes(raw)[split]]
    with h5py.File(grid_file, "w") as f:  # pytorch-vqa's layout: features (N, C, H, W), ids (N,)
        f["features"] = np.random.default_rng(0).random((len(ids), 6, 2, 2)).astype(np.float16)
        f["ids"] = np.asarray(ids, np.int32)
    for split in demo_data.SPLITS:
        shutil.rmtree(raw / split)  # no image at all
    questions = [q["question"] for split in demo_data.SPLITS
                 for q in json.loads((raw / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]]
    words = {t for tokens in text.tokenize(text.blank_tokenizer("en"), questions) for t in tokens}
    return {"root": root, "raw": raw, "regions": root / "regions", "grids": grid_file,
            "vectors": vectors_factory(words, "imported_vectors")}


def _preprocess(imported, out, *options):
    return main(["preprocess", "--data-dir", str(imported["raw"]), "--out", str(out),
                 "--vectors", str(imported["vectors"]), *options])


def test_regions_alone_preprocess_train_and_evaluate(imported, capsys):
    out = imported["root"] / "regions_out"
    assert _preprocess(imported, out, "--regions", str(imported["regions"])) == 0
    manifest = json.loads((out / "preprocess.json").read_text())
    assert manifest["splits"]["train2014"]["num_region_images"] == 24
    assert not (out / "train2014" / "image_features.h5").exists()  # nothing was extracted
    assert not (out / "backbone.json").exists()  # and no backbone was asked for

    attention, pooled = imported["root"] / "runs" / "mg", imported["root"] / "runs" / "mean"
    assert main(["train", "--data", str(out), "--out", str(attention), "--model", "multi-glimpse",
                 "--epochs", "2", *TINY]) == 0
    assert main(["train", "--data", str(out), "--out", str(pooled), "--epochs", "2", *TINY]) == 0
    assert json.loads((attention / "run.json").read_text())["features"] == "regions"
    assert json.loads((pooled / "run.json").read_text())["features"] == "region-mean"
    metrics = json.loads((attention / "metrics.json").read_text())
    assert metrics["num_train_missing_images"] == 0 and metrics["num_train_questions"] > 60

    capsys.readouterr()
    assert main(["evaluate", "--run", str(attention), "--data", str(out), "--split", "val2014"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["questions_without_image"] == 0 and 0 <= scored["overall"] <= 100

    # A run on detector regions cannot be asked about a photo: one sentence, no traceback.
    assert main(["predict", "--run", str(attention), "--image", str(imported["grids"]),
                 "--question", "what color is the circle?"]) == 1
    error = capsys.readouterr().err
    assert "object detector" in error and "Traceback" not in error


def test_grids_alone_train_attention_and_grid_mean_models(imported):
    """The bug this fixes: with only a grid file, every image was 'missing' and training had no question."""
    out = imported["root"] / "grid_out"
    assert _preprocess(imported, out, "--grid-features", str(imported["grids"])) == 0
    with h5py.File(out / "train2014" / "grid_features.h5", "r") as f:
        assert len(f[H5_IMAGE_IDS]) == 24
    for model, features in (("san", "grid"), ("deeper-lstm-norm-i", "grid-mean")):
        run = imported["root"] / "runs" / f"grid-{model}"
        assert main(["train", "--data", str(out), "--out", str(run), "--model", model, "--epochs", "1", *TINY]) == 0
        assert json.loads((run / "run.json").read_text())["features"] == features
        assert json.loads((run / "metrics.json").read_text())["num_train_missing_images"] == 0
    run = imported["root"] / "runs" / "grid-regions"
    assert main(["train", "--data", str(out), "--out", str(run), "--model", "san", "--epochs", "1",
                 "--set", "data.features=grid-regions", *TINY]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(out), "--split", "val2014"]) == 0


def test_a_source_the_model_cannot_read_is_one_sentence(imported, capsys):
    out = imported["root"] / "regions_out"
    if not (out / "preprocess.json").exists():
        assert _preprocess(imported, out, "--regions", str(imported["regions"])) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(out), "--out", str(imported["root"] / "runs" / "bad"),
                 "--model", "san", "--set", "data.features=fc7", *TINY]) == 1
    error = capsys.readouterr().err
    assert "model san reads regions or grid inputs" in error and "Traceback" not in error
    assert main(["train", "--data", str(out), "--out", str(imported["root"] / "runs" / "bad2"),
                 "--set", "data.features=grid"]) == 1
    assert "model deeper-lstm-norm-i reads vector inputs" in capsys.readouterr().err
