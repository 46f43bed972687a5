"""Grid-feature extraction: VGG-16 block5_pool beside fc7 from one forward pass, a .keras model's 4-D layer,
resumable and sharded extraction of the grid file, and `vqa preprocess --features grid|both`.

References are computed apart from the code under test: the keras layer outputs of an independently
built model holding the same weights.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from helpers import three_question_items, write_official_split
from vqa import backbone as backbone_lib
from vqa import dataset, extraction, grid_features
from vqa import images as images_lib
from vqa.cli import main
from vqa.errors import VQAError

REPO = Path(__file__).resolve().parents[1]
GRID = (4, 4, 8)  # the tiny model's "cells" layer
FLOAT16 = dict(rtol=2e-3, atol=2e-3)  # float16 keeps about 3 significant digits


@pytest.fixture(scope="module")
def grid_model(tmp_path_factory) -> Path:
    """A 32 x 32 -> 6-d feature model whose last 4-D layer, "cells", is a 4 x 4 x 8 grid."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(4, name="cells")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(6, name="features")(x)
    path = tmp_path_factory.mktemp("backbone") / "grid_model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def layer_output(model_path: Path, layer: str, images: np.ndarray) -> np.ndarray:
    """What keras itself gives for ``layer`` of the saved model on 0-255 images."""
    model = keras.saving.load_model(model_path)
    probe = keras.Model(model.input, model.get_layer(layer).output)
    return keras.ops.convert_to_numpy(probe(images.astype(np.float32)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[int, Path]]:
    """Nine small random JPEGs and one unreadable file, as (id, path) pairs."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    images = []
    for image_id in [5, 3, 11, 0, 8, 1, 9, 4, 10]:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
        images.append((image_id, folder / f"{image_id}.jpg"))
    (folder / "6.jpg").write_text("not a JPEG")
    images.insert(4, (6, folder / "6.jpg"))
    return images


def pixels(images, size) -> np.ndarray:
    return np.stack([images_lib.load_image(path, size) for _, path in images])


def file_contents(path: Path) -> tuple[dict, dict]:
    """A feature or grid file's attributes and its datasets' dtypes, shapes, chunks and bytes."""
    with h5py.File(path, "r") as f:
        datasets = {name: (f[name].dtype, f[name].shape, f[name].chunks, f[name][...].tobytes()) for name in f}
        return dict(f.attrs), datasets


# --- VGG-16 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_fc7():
    """VGG-16 with seeded random weights, fc7 only: the weights every VGG test compares against."""
    return backbone_lib.load_backbone("none", seed=3)


def convolutional_reference(vgg_fc7, image_size: int):
    """keras's own VGG16(include_top=False) at ``image_size``, holding the fc7 backbone's weights."""
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    for layer in reference.layers:
        if layer.weights:
            layer.set_weights(vgg_fc7.model.get_layer(layer.name).get_weights())
    return reference


@pytest.mark.slow
def test_vgg16_gives_fc7_and_block5_pool_from_one_forward_pass(vgg_fc7, photos, tmp_path):
    images = [photos[0], photos[1], photos[4]]  # two photos and the unreadable file
    backbone = backbone_lib.load_backbone("none", seed=3, grid_layer="auto")
    paths = {"features": tmp_path / "image_features.h5", "grid": tmp_path / "grid_features.h5"}

    results = extraction.extract_outputs(images, backbone, paths, batch_size=3)

    assert backbone.batches_run == 1  # both files from one model call
    assert (backbone.spec.grid_layer, backbone.spec.grid_shape, backbone.feature_dim) == ("block5_pool", (7, 7, 512),
                                                                                          4096)
    for result in results.values():
        assert result.image_ids.tolist() == [5, 3] and list(result.skipped) == [6]
    batch = pixels(images[:2], (224, 224))
    with h5py.File(paths["features"], "r") as f:
        np.testing.assert_allclose(f["features"][...].astype(np.float32), vgg_fc7.features(batch), **FLOAT16)
    reference = convolutional_reference(vgg_fc7, 224)
    expected = reference.predict_on_batch(keras.applications.vgg16.preprocess_input(batch.astype(np.float32)))
    info = grid_features.read_grid_info(paths["grid"])
    assert (info.shape, info.layer, info.spec) == ((7, 7, 512), "block5_pool", backbone.spec)
    with grid_features.GridReader(paths["grid"]) as grids:
        rows = grids.read([0, 1])
    assert rows.dtype == np.float16 and rows.any()
    np.testing.assert_allclose(rows.astype(np.float32), expected, **FLOAT16)


@pytest.mark.slow
def test_vgg16_at_448_gives_14_by_14_grids_and_no_fc7(vgg_fc7, photos, tmp_path):
    with pytest.raises(VQAError, match="fc7 features for 224 x 224 images only.*--features grid"):
        backbone_lib.load_backbone("none", seed=3, image_size=448)
    backbone = backbone_lib.load_backbone("none", seed=3, image_size=448, grid_layer="", features=False)
    assert (backbone.image_size, backbone.feature_dim, backbone.grid_shape) == ((448, 448), 0, (14, 14, 512))
    with pytest.raises(VQAError, match="gives only a grid"):
        backbone.features(np.zeros((1, 448, 448, 3), np.uint8))

    result = extraction.extract_outputs(photos[:1], backbone, {"grid": tmp_path / "grid_features.h5"})["grid"]

    assert result.image_ids.tolist() == [5]
    with grid_features.GridReader(result.path) as grids:
        row = grids.read([0])
    reference = convolutional_reference(vgg_fc7, 448)
    expected = reference.predict_on_batch(
        keras.applications.vgg16.preprocess_input(pixels(photos[:1], (448, 448)).astype(np.float32)))
    assert row.shape == (1, 14, 14, 512)
    np.testing.assert_allclose(row.astype(np.float32), expected, **FLOAT16)
    rebuilt = backbone_lib.Backbone.from_spec(backbone_lib.BackboneSpec.from_dict(backbone.spec.to_dict()))
    assert rebuilt.spec == backbone.spec and rebuilt.grid_shape == (14, 14, 512)


# --- a .keras backbone -------------------------------------------------------------------------------


def test_keras_backbone_grid_is_its_last_4d_layer_or_the_named_one(grid_model, photos):
    batch = pixels(photos[:3], (32, 32))
    auto = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    named = backbone_lib.load_backbone(str(grid_model), grid_layer="conv", features=False)

    outputs = auto.outputs(batch)

    assert (auto.spec.grid_layer, auto.spec.grid_shape, auto.feature_dim) == ("cells", GRID, 6)
    assert auto.batches_run == 1 and sorted(outputs) == ["features", "grid"]
    np.testing.assert_allclose(outputs["grid"], layer_output(grid_model, "cells", batch), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["features"], layer_output(grid_model, "features", batch), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(auto.grids(batch), outputs["grid"])
    assert (named.spec.grid_layer, named.spec.grid_shape, named.feature_dim) == ("conv", (16, 16, 8), 0)
    np.testing.assert_allclose(named.grids(batch), layer_output(grid_model, "conv", batch), rtol=1e-5, atol=1e-6)
    # The spec names the layer it found, so a rebuild gives the same grid.
    rebuilt = backbone_lib.Backbone.from_spec(backbone_lib.BackboneSpec.from_dict(json.loads(auto.spec.to_json())))
    np.testing.assert_array_equal(rebuilt.grids(batch), outputs["grid"])
    with pytest.raises(VQAError, match="has no layer 'nope'.*conv, cells"):
        backbone_lib.load_backbone(str(grid_model), grid_layer="nope")
    with pytest.raises(VQAError, match="no grid layer"):
        backbone_lib.load_backbone(str(grid_model)).grids(batch)


def test_specs_without_a_grid_read_and_write_as_before():
    old = {"kind": "keras", "weights": "/m.keras", "image_size": [32, 32], "feature_dim": 6, "seed": 0}
    spec = backbone_lib.BackboneSpec.from_dict(old)
    assert (spec.grid_layer, spec.grid_shape) == ("", None) and spec.to_dict() == old
    with_grid = backbone_lib.BackboneSpec.from_dict({**old, "grid_layer": "cells", "grid_shape": [4, 4, 8]})
    assert with_grid.grid_shape == GRID and backbone_lib.BackboneSpec.from_dict(with_grid.to_dict()) == with_grid
    assert not backbone_lib.same_features(spec, with_grid)
    with pytest.raises(VQAError, match="incomplete"):
        backbone_lib.BackboneSpec.from_dict({**old, "grid_layer": "cells", "grid_shape": [4, 4]})


# --- resumable and sharded extraction ------------------------------------------------------------


class Interrupt(Exception):
    pass


def crash_after(backbone: backbone_lib.Backbone, batches: int) -> None:
    """Make the backbone fail on its (batches + 1)-th call, as a crash in the middle of a run would."""
    run_batch = backbone.outputs

    def outputs_then_crash(images):
        if backbone.batches_run >= batches:
            raise Interrupt
        return run_batch(images)

    backbone.outputs = outputs_then_crash


def test_both_files_hold_the_models_outputs_and_are_reused(grid_model, photos, tmp_path):
    backbone = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    paths = {"features": tmp_path / "image_features.h5", "grid": tmp_path / "grid_features.h5"}

    results = extraction.extract_outputs(photos, backbone, paths, batch_size=4, dtype="float32")

    assert backbone.batches_run == 3  # 10 images in batches of 4: one call per batch for both files
    kept = [pair for pair in photos if pair[0] != 6]
    batch = pixels(kept, (32, 32))
    with h5py.File(paths["features"], "r") as f:
        assert f["image_ids"][...].tolist() == [image_id for image_id, _ in kept]
        np.testing.assert_allclose(f["features"][...], layer_output(grid_model, "features", batch), rtol=1e-5,
                                   atol=1e-6)
    with grid_features.GridReader(paths["grid"]) as grids:
        assert grids.image_ids.tolist() == [image_id for image_id, _ in kept] and grids.dtype == np.float32
        np.testing.assert_allclose(grids.read(range(len(kept))), layer_output(grid_model, "cells", batch),
                                   rtol=1e-5, atol=1e-6)
    assert results["grid"].skipped == results["features"].skipped == {6: "not an image file"}
    again = extraction.extract_outputs(photos, backbone, paths, batch_size=4, dtype="float32")
    assert all(result.reused for result in again.values()) and backbone.batches_run == 3


def test_interrupted_grid_extraction_resumes_to_the_same_bytes(grid_model, photos, tmp_path, monkeypatch):
    reference = {"features": tmp_path / "ref" / "image_features.h5", "grid": tmp_path / "ref" / "grid_features.h5"}
    extraction.extract_outputs(photos, backbone_lib.load_backbone(str(grid_model), grid_layer="auto"), reference,
                               batch_size=2)
    paths = {"features": tmp_path / "image_features.h5", "grid": tmp_path / "grid_features.h5"}
    crashing = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    crash_after(crashing, batches=2)

    with pytest.raises(Interrupt):
        extraction.extract_outputs(photos, crashing, paths, batch_size=2)
    assert not any(path.exists() for path in paths.values())
    assert Path(f"{paths['features']}.partial").exists()
    backbone = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    results = extraction.extract_outputs(photos, backbone, paths, batch_size=2)

    assert (results["grid"].resumed, results["grid"].computed, backbone.batches_run) == (4, 5, 3)
    for name in paths:
        assert file_contents(paths[name]) == file_contents(reference[name]), name

    # Killed between writing the two files: the rerun writes the second from the partial file alone.
    paths["grid"].unlink()
    paths["features"].unlink()
    written = grid_features.write_grid_rows

    def crash_on_the_grid_file(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(grid_features, "write_grid_rows", crash_on_the_grid_file)
    with pytest.raises(Interrupt):
        extraction.extract_outputs(photos, backbone_lib.load_backbone(str(grid_model), grid_layer="auto"), paths,
                                   batch_size=2)
    assert paths["features"].exists() and not paths["grid"].exists()
    monkeypatch.setattr(grid_features, "write_grid_rows", written)
    idle = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    again = extraction.extract_outputs(photos, idle, paths, batch_size=2)
    assert idle.batches_run == 0 and again["features"].reused and not again["grid"].reused
    assert file_contents(paths["grid"]) == file_contents(reference["grid"])


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vqa import backbone as backbone_lib
    from vqa import extraction

    model_path, image_dir, out_dir, count = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    backbone = backbone_lib.load_backbone(model_path, grid_layer="auto")
    run_batch = backbone.outputs

    def slow_outputs(images):
        rows = run_batch(images)
        print("batch", flush=True)
        time.sleep(0.03)
        return rows

    backbone.outputs = slow_outputs
    images = [(i, image_dir / f"{[5, 3, 11, 0][i % 4]}.jpg") for i in range(count)]
    extraction.extract_outputs(images, backbone, {"grid": out_dir / "grid_features.h5"}, batch_size=1, workers=2)
    print("finished", flush=True)
""")


def test_sigkilled_grid_extraction_resumes_to_the_same_file(grid_model, photos, tmp_path):
    count, image_dir = 60, photos[0][1].parent
    env = {**os.environ, "PYTHONPATH": str(REPO), "VQA_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(grid_model), str(image_dir), str(tmp_path), str(count)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in child.stdout], daemon=True).start()
    try:
        for _ in range(15):  # let it write about 15 grids, then kill it without warning
            assert lines.get(timeout=120) == "batch", "the extraction finished before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    out = tmp_path / "grid_features.h5"
    assert not out.exists()
    with h5py.File(f"{out}.partial", "r") as partial:
        done = int(np.count_nonzero(partial["state"][...]))
        assert partial["grids"].chunks == (1, *GRID)
    assert 0 < done < count
    images = [(i, image_dir / f"{[5, 3, 11, 0][i % 4]}.jpg") for i in range(count)]
    backbone = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    result = extraction.extract_outputs(images, backbone, {"grid": out}, batch_size=1)["grid"]

    assert result.resumed == done and backbone.batches_run == count - done
    reference = tmp_path / "reference" / "grid_features.h5"
    extraction.extract_outputs(images, backbone_lib.load_backbone(str(grid_model), grid_layer="auto"),
                               {"grid": reference}, batch_size=1)
    assert file_contents(out) == file_contents(reference)


def test_three_shards_merge_into_the_unsharded_grid_file(grid_model, photos, tmp_path):
    backbone = backbone_lib.load_backbone(str(grid_model), grid_layer="auto")
    whole = {"features": tmp_path / "whole" / "image_features.h5", "grid": tmp_path / "whole" / "grid_features.h5"}
    extraction.extract_outputs(photos, backbone, whole, batch_size=2)
    paths = {"features": tmp_path / "image_features.h5", "grid": tmp_path / "grid_features.h5"}
    for index in range(3):
        extraction.extract_outputs(photos, backbone, paths, batch_size=2, shard=(index, 3))
    assert len(list(tmp_path.glob("grid_features.h5.shard-*-of-3"))) == 3

    other = backbone_lib.load_backbone(str(grid_model), grid_layer="conv").spec
    with pytest.raises(VQAError, match="was made with another backbone than this run's"):
        extraction.merge_shards(photos, paths["grid"], 3, backbone=other)
    merged = {name: extraction.merge_shards(photos, path, 3, backbone=backbone.spec) for name, path in paths.items()}

    assert merged["grid"].image_ids.tolist() == merged["features"].image_ids.tolist()
    for name in paths:
        assert file_contents(paths[name]) == file_contents(whole[name]), name
        assert paths[name].read_bytes() == whole[name].read_bytes(), name
    assert not list(tmp_path.glob("*.shard-*"))


# --- vqa preprocess ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A tiny official-layout dataset: 6 train images (one unreadable), 3 val images, three questions each."""
    root = tmp_path_factory.mktemp("raw")
    write_official_split(root, "train2014", three_question_items([1, 2, 3, 4, 5, 6]))
    write_official_split(root, "val2014", three_question_items([7, 8, 9]))
    next(root.glob("train2014/*000000000006.jpg")).write_text("not a JPEG")
    return root


@pytest.fixture(scope="module")
def vectors(raw, vectors_factory) -> str:
    from vqa import text

    questions = [q["question"] for split in ("train2014", "val2014") for q in json.loads(
        (raw / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]]
    return str(vectors_factory({t for tokens in text.tokenize(text.blank_tokenizer("en"), questions) for t in tokens}))


def preprocess_args(raw, vectors, model, out, *extra) -> list[str]:
    return ["preprocess", "--data-dir", str(raw), "--out", str(out), "--vectors", vectors, "--weights", str(model),
            "--batch-size", "2", *extra]


def test_preprocess_grid_only_writes_the_grid_file_and_an_attention_model_trains_on_it(
        raw, vectors, grid_model, tmp_path, capsys):
    out = tmp_path / "out"

    assert main(preprocess_args(raw, vectors, grid_model, out, "--features", "grid")) == 0

    split_dir = out / "train2014"
    assert not (split_dir / "image_features.h5").exists() and not list(split_dir.glob("*.partial"))
    image_ids = [1, 2, 3, 4, 5]  # image 6 is unreadable
    paths = [(i, next(raw.glob(f"train2014/*{i:012d}.jpg"))) for i in image_ids]
    with grid_features.GridReader(grid_features.grid_path(split_dir)) as grids:
        assert grids.image_ids.tolist() == image_ids and grids.info.layer == "cells"
        stored = grids.read(range(5)).astype(np.float32)
    np.testing.assert_allclose(stored, layer_output(grid_model, "cells", pixels(paths, (32, 32))), **FLOAT16)
    manifest = json.loads((out / "preprocess.json").read_text())
    record = manifest["splits"]["train2014"]
    assert (record["num_grid_images"], record["num_images"], record["questions_without_image"]) == (5, 5, 3)
    assert manifest["config"]["features"] == "grid" and manifest["backbone"]["grid_layer"] == "cells"
    assert manifest["backbone"]["feature_dim"] == 0 and manifest["backbone"]["grid_shape"] == list(GRID)
    with h5py.File(split_dir / "questions.h5", "r") as f:
        image_index, question_images = f["image_index"][...], f["image_ids"][...]
    np.testing.assert_array_equal(np.array(image_ids)[image_index[image_index >= 0]],
                                  question_images[image_index >= 0])
    assert (image_index[question_images == 6] == -1).all()
    with pytest.raises(VQAError, match="has no image_features.h5, which data.features=fc7 .* or pick another "
                                       "data.features"):
        dataset.load_split(out, "train2014", "fc7")
    # data.features=auto: a global model takes the grid's cell means when there is no fc7 file, san the grid.
    from vqa.config import Config, ModelConfig
    from vqa.train import image_source

    assert image_source(Config(), out) == "grid-mean"
    assert image_source(Config(model=ModelConfig(name="san")), out) == "grid"
    assert image_source(Config(model=ModelConfig(name="question-only")), out) is None
    # The folder's backbone rebuilds the same grid for a new image (what predict runs).
    rebuilt = backbone_lib.folder_backbone(out)
    assert rebuilt.grid_shape == GRID and rebuilt.feature_dim == 0
    np.testing.assert_allclose(rebuilt.grids(pixels(paths, (32, 32))), stored, **FLOAT16)

    assert main(preprocess_args(raw, vectors, grid_model, out, "--features", "grid")) == 0  # again: all reused
    capsys.readouterr()
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "run"), "--model", "san", "--epochs", "1",
                 "--set", "model.lstm_units=4", "--set", "model.lstm_layers=1", "--set", "model.hidden_units=8",
                 "--set", "model.fusion_units=8", "--set", "train.batch_size=8"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics and (tmp_path / "run" / "run.json").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["grid_shape"] == list(GRID)


def test_sharded_preprocess_with_both_outputs_merges_into_the_unsharded_files(raw, vectors, grid_model, tmp_path,
                                                                               capsys):
    assert main(preprocess_args(raw, vectors, grid_model, tmp_path / "plain", "--features", "both",
                                "--splits", "train2014")) == 0
    sharded = tmp_path / "sharded"
    for index in range(3):
        assert main(preprocess_args(raw, vectors, grid_model, sharded, "--features", "both", "--splits", "train2014",
                                    "--shard", f"{index}/3")) == 0
    assert len(list((sharded / "train2014").glob("*.shard-*-of-3"))) == 6
    capsys.readouterr()

    assert main(preprocess_args(raw, vectors, grid_model, sharded, "--features", "both", "--splits",
                                "train2014")) == 0

    log = capsys.readouterr().err
    assert "merging the image features of 3 shards" in log and "merging the grid features of 3 shards" in log
    assert not list((sharded / "train2014").glob("*.shard-*"))
    for name in ("image_features.h5", "grid_features.h5", "questions.h5"):
        plain, merged = tmp_path / "plain" / "train2014" / name, sharded / "train2014" / name
        assert file_contents(merged) == file_contents(plain), name
    manifest = json.loads((sharded / "preprocess.json").read_text())
    assert manifest["splits"]["train2014"]["num_grid_images"] == manifest["splits"]["train2014"]["num_images"] == 5


def test_bad_feature_options_are_one_sentence_each(raw, vectors, grid_model, tmp_path, capsys):
    (tmp_path / "grids.h5").write_bytes(b"")
    cases = [
        (["--features", "hog"], "--features must be one of auto, fc7, grid, both, none, not hog."),
        (["--features", "none", "--image-size", "64"], "--image-size and --grid-layer set how features are extracted "
                                                       "from the images, but this run extracts none"),
        (["--id-map", str(tmp_path / "grids.h5")], "--id-map goes with --features-mat (its columns) or --regions"),
        (["--image-size", "16"], "--image-size must be 0 (the backbone's own size) or from 32 to 4096, not 16."),
        (["--features", "grid", "--features-mat", str(tmp_path / "grids.h5"), "--id-map", str(tmp_path / "grids.h5")],
         "--features grid extracts grid features from the images, which --features-mat cannot give"),
        (["--features", "both", "--grid-features", str(tmp_path / "grids.h5")],
         "--grid-features imports grid features while --features both extracts them"),
        (["--grid-layer", "cells"], "--grid-layer cells names the layer of extracted grid features"),
        (["--features", "grid", "--grid-layer", "nope"], "has no layer 'nope'"),
        (["--features", "grid", "--image-size", "64"], "takes 32 x 32 images, not 64 x 64"),
    ]
    for index, (extra, sentence) in enumerate(cases):
        assert main(preprocess_args(raw, vectors, grid_model, tmp_path / f"o{index}", *extra)) == 1, extra
        error = capsys.readouterr().err
        last = error.strip().splitlines()[-1]
        assert last.startswith("error: ") and sentence in last and "Traceback" not in error, (extra, error)
    vgg = preprocess_args(raw, vectors, "none", tmp_path / "vgg", "--image-size", "448")
    assert main(vgg) == 1
    assert "--image-size 448 leaves VGG-16 without fc7 features" in capsys.readouterr().err

    out = tmp_path / "fc7"
    assert main(preprocess_args(raw, vectors, grid_model, out, "--splits", "train2014")) == 0
    capsys.readouterr()
    assert main(preprocess_args(raw, vectors, grid_model, out, "--splits", "val2014", "--features", "both")) == 1
    assert "holds features from another backbone" in capsys.readouterr().err
    # A record spelling out fields that do not change the features (older or newer vqa versions may) still matches.
    manifest = json.loads((out / "preprocess.json").read_text())
    manifest["backbone"].update(grid_layer="", grid_shape=None)
    (out / "preprocess.json").write_text(json.dumps(manifest))
    assert main(preprocess_args(raw, vectors, grid_model, out, "--splits", "val2014")) == 0
