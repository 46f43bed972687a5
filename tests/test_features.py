"""Image backbones, image decoding, resumable HDF5 feature extraction and .mat import."""

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
import scipy.io
from PIL import Image

from vqa import backbone as backbone_lib
from vqa import extraction, features, matfile
from vqa import images as images_lib
from vqa.errors import VQAError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqa_real_sample"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"real VQA sample fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A 32x32 -> 8 feature model that scales its own 0-255 input, like the demo's stand-in."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(8)(x)
    path = tmp_path_factory.mktemp("backbone") / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny_backbone").save(path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Twelve small random RGB JPEGs named <id>.jpg, ids 0-11, of varying sizes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for image_id in range(12):
        pixels = rng.integers(0, 256, (30 + image_id, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=90)
    return folder


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Files the extractor must convert (cmyk, gray, png-as-jpg, palette) or skip (the rest)."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8), "CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.full((20, 24), 77, dtype=np.uint8), "L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "png.jpg", format="PNG")
    palette = Image.fromarray(rng.integers(0, 4, (20, 24), dtype=np.uint8), "P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 60000, (20, 24), dtype=np.uint16)).save(folder / "sixteen.png")
    (folder / "text.jpg").write_text("this is not a JPEG")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "full.jpg")
    whole = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    return {name: folder / f"{name}.{'png' if name in ('palette', 'sixteen') else 'jpg'}"
            for name in ("cmyk", "gray", "png", "palette", "sixteen", "text", "truncated", "empty")}


# --- backbones -------------------------------------------------------------------------------------


def test_keras_file_backbone_scales_its_own_input(tiny_model_path):
    backbone = backbone_lib.load_backbone(str(tiny_model_path))
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)

    result = backbone.features(images)

    assert backbone.spec == backbone_lib.BackboneSpec(kind="keras", weights=str(tiny_model_path.resolve()),
                                                  image_size=(32, 32), feature_dim=8)
    assert (backbone.image_size, backbone.feature_dim) == ((32, 32), 8)
    assert result.shape == (3, 8) and result.dtype == np.float32
    expected = keras.saving.load_model(tiny_model_path)(images.astype(np.float32))
    np.testing.assert_allclose(result, keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-6)
    assert backbone_lib.BackboneSpec.from_dict(json.loads(json.dumps(backbone.spec.to_dict()))) == backbone.spec
    rebuilt = backbone_lib.Backbone.from_spec(backbone.spec, keras_path=tiny_model_path)
    np.testing.assert_array_equal(rebuilt.features(images), result)
    with pytest.raises(ValueError, match="expected uint8 images"):
        backbone.features(images.astype(np.float32))


def test_load_backbone_rejects_missing_and_unknown_weights(tmp_path):
    with pytest.raises(VQAError, match="do not exist"):
        backbone_lib.load_backbone(str(tmp_path / "missing.keras"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(VQAError, match="neither a VGG-16"):
        backbone_lib.load_backbone(str(tmp_path / "weights.bin"))
    with pytest.raises(VQAError, match="incomplete"):
        backbone_lib.BackboneSpec.from_dict({"kind": "vgg16"})


def test_imagenet_weights_unavailable_says_where_keras_caches_them(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/vgg16.h5: None -- [Errno -2] Name unknown")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)

    with pytest.raises(VQAError, match=r"\[Errno -2\] Name unknown.*models/vgg16_weights_tf_dim_ordering_tf_kernels.h5"
                                       r".*--weights PATH"):
        backbone_lib.load_backbone("imagenet")


@needs_fixture
def test_vgg16_without_weights_gives_fc7_features_for_real_coco_images(tmp_path):
    images = [(192, FIXTURE / "images" / "COCO_val2014_000000000192.jpg"),
              (458752, FIXTURE / "images" / "COCO_train2014_000000458752.jpg")]
    backbone = backbone_lib.load_backbone("none", seed=0)

    result = extraction.extract_features(images, backbone, tmp_path / "image_features.h5", batch_size=2,
                                       dtype="float32")
    stored = features.read_features(tmp_path / "image_features.h5")
    image_ids, rows = stored.image_ids, stored.features

    assert backbone.spec == backbone_lib.BackboneSpec("vgg16", "none", (224, 224), 4096, seed=0)
    assert result.skipped == {}
    np.testing.assert_array_equal(image_ids, [192, 458752])
    assert rows.shape == (2, 4096) and rows.dtype == np.float32
    assert np.isfinite(rows).all() and (rows >= 0).all() and rows.any()  # fc2 ends in a ReLU
    assert features.read_feature_spec(tmp_path / "image_features.h5") == backbone.spec


@pytest.mark.slow
@needs_fixture
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_vgg16_without_weights_is_rebuilt_identically_from_its_spec(tmp_path):
    image = images_lib.load_image(FIXTURE / "images" / "COCO_val2014_000000000241.jpg", (224, 224))[None]
    first = backbone_lib.load_backbone("none", seed=5)

    rebuilt = backbone_lib.Backbone.from_spec(backbone_lib.BackboneSpec.from_dict(first.spec.to_dict()))

    np.testing.assert_array_equal(rebuilt.features(image), first.features(image))
    with h5py.File(tmp_path / "wrong.weights.h5", "w") as f:
        f["nothing"] = np.zeros(3)
    with pytest.raises(VQAError, match="wrong.weights.h5 could not be loaded"):
        backbone_lib.load_backbone(str(tmp_path / "wrong.weights.h5"))


def test_a_folder_records_its_backbone_and_rebuilds_it(tiny_model_path, tmp_path):
    backbone = backbone_lib.load_backbone(str(tiny_model_path))
    out, run = tmp_path / "out", tmp_path / "run"
    assert backbone_lib.read_backbone(out) is None
    with pytest.raises(VQAError, match="is missing, so .* cannot turn a new image into features"):
        backbone_lib.folder_backbone(out)

    backbone_lib.write_backbone(out, backbone.spec, keras_source=tiny_model_path)
    backbone_lib.copy_backbone(out, run)

    assert backbone_lib.read_backbone(run) == backbone.spec
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(backbone_lib.folder_backbone(run).features(images), backbone.features(images))
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in out.iterdir())  # no temporary files

    mat = backbone_lib.BackboneSpec.for_mat("/data/vgg_feats.mat", 4096)
    backbone_lib.write_backbone(run, mat)
    assert backbone_lib.read_backbone(run) == mat and mat.image_size is None and not mat.has_model
    assert len(list(run.iterdir())) == 1  # the model copy of the earlier backbone is gone
    with pytest.raises(VQAError, match="imported from a .mat file, so it has no image backbone"):
        backbone_lib.folder_backbone(run)
    with pytest.raises(VQAError, match="not a model"):
        backbone_lib.Backbone.from_spec(mat)


def test_spec_kinds_and_which_fields_decide_the_features():
    spec = backbone_lib.BackboneSpec("vgg16", "none", (224, 224), 4096, seed=1)
    assert backbone_lib.same_features(spec, backbone_lib.BackboneSpec.from_dict(spec.to_dict() | {"later": 1}))
    assert not backbone_lib.same_features(spec, backbone_lib.BackboneSpec("vgg16", "none", (224, 224), 4096, seed=2))
    # A .mat description from before the spec knew the kind: no image_size, no seed.
    old = backbone_lib.BackboneSpec.from_dict({"kind": "mat", "weights": "/data/vgg_feats.mat", "feature_dim": 8})
    assert old == backbone_lib.BackboneSpec.for_mat("/data/vgg_feats.mat", 8)
    assert backbone_lib.BackboneSpec.from_dict(json.loads(old.to_json())) == old
    with pytest.raises(VQAError, match="unknown"):
        backbone_lib.BackboneSpec.from_dict({"kind": "resnet", "weights": "x", "image_size": [1, 1], "feature_dim": 1})


# --- images ----------------------------------------------------------------------------------------


def test_load_image_converts_any_mode_to_rgb_at_the_requested_size(tmp_path):
    files = write_odd_images(tmp_path)

    for name in ("cmyk", "gray", "png", "palette", "sixteen"):
        image = images_lib.load_image(files[name], (16, 12))
        assert image.shape == (16, 12, 3) and image.dtype == np.uint8, name
    gray = images_lib.load_image(files["gray"], (16, 12))
    assert np.all(gray == 77)


def test_load_image_raises_unreadable_image_with_a_reason(tmp_path, monkeypatch):
    files = write_odd_images(tmp_path)

    cases = {tmp_path / "missing.jpg": "does not exist", files["text"]: "not an image",
             files["empty"]: "not an image", files["truncated"]: "truncated"}
    for path, reason in cases.items():
        with pytest.raises(images_lib.UnreadableImage, match=reason):
            images_lib.load_image(path, (16, 16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # full.jpg has 4096 > 2 x 1000 pixels: a "bomb"
    with pytest.raises(images_lib.UnreadableImage, match="too many pixels"):
        images_lib.load_image(tmp_path / "full.jpg", (16, 16))


def test_check_image_reads_the_header_only(tmp_path, monkeypatch):
    files = write_odd_images(tmp_path)

    images_lib.check_image(files["truncated"])  # the header is whole: only decoding finds the rest missing
    cases = {tmp_path / "missing.jpg": "does not exist", files["text"]: "not an image file",
             files["empty"]: "not an image file"}
    for path, reason in cases.items():
        with pytest.raises(images_lib.UnreadableImage, match=reason):
            images_lib.check_image(path)
    (tmp_path / "header.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(images_lib.UnreadableImage, match="corrupt or truncated"):
        images_lib.check_image(tmp_path / "header.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(images_lib.UnreadableImage, match="too many pixels"):
        images_lib.check_image(tmp_path / "full.jpg")

    def recurse(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Image, "open", recurse)
    with pytest.raises(images_lib.UnreadableImage, match="corrupt or truncated .RecursionError"):
        images_lib.check_image(files["gray"])


# --- extraction ------------------------------------------------------------------------------------


def test_extract_features_writes_one_row_per_readable_image(tiny_model_path, image_dir, tmp_path):
    odd = write_odd_images(tmp_path)
    images = [(image_id, image_dir / f"{image_id}.jpg") for image_id in range(5)]
    images += [(100, odd["cmyk"]), (101, odd["text"]), (102, odd["gray"]), (103, tmp_path / "missing.jpg"),
               (104, odd["png"]), (105, odd["truncated"]), (106, odd["palette"])]
    backbone = backbone_lib.load_backbone(str(tiny_model_path))

    result = extraction.extract_features(images, backbone, tmp_path / "image_features.h5", batch_size=4,
                                       dtype="float32", workers=2)

    assert set(result.skipped) == {101, 103, 105}
    assert "not an image" in result.skipped[101] and "does not exist" in result.skipped[103]
    expected_ids = [0, 1, 2, 3, 4, 100, 102, 104, 106]
    np.testing.assert_array_equal(result.image_ids, expected_ids)
    assert (result.computed, result.resumed, result.reused) == (9, 0, False)
    stored = features.read_features(tmp_path / "image_features.h5")
    np.testing.assert_array_equal(stored.image_ids, expected_ids)
    assert stored.spec == backbone.spec and stored.skipped == result.skipped
    rows = stored.features
    paths = dict(images)
    expected = backbone.features(np.stack([images_lib.load_image(paths[i], (32, 32)) for i in expected_ids]))
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    with h5py.File(tmp_path / "image_features.h5", "r") as f:
        assert f["image_ids"].dtype == np.int64
        assert json.loads(f.attrs["backbone"]) == backbone.spec.to_dict()
    assert not Path(f"{tmp_path / 'image_features.h5'}.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_float16_rows_are_the_float32_rows_rounded(tiny_model_path, image_dir, tmp_path):
    images = [(image_id, image_dir / f"{image_id}.jpg") for image_id in range(6)]
    backbone = backbone_lib.load_backbone(str(tiny_model_path))

    extraction.extract_features(images, backbone, tmp_path / "f32.h5", batch_size=3, dtype="float32")
    extraction.extract_features(images, backbone, tmp_path / "f16.h5", batch_size=3, dtype="float16")

    rows32 = features.read_features(tmp_path / "f32.h5").features
    rows16 = features.read_features(tmp_path / "f16.h5").features
    assert rows16.dtype == np.float16 and rows32.dtype == np.float32
    np.testing.assert_array_equal(rows16, rows32.astype(np.float16))
    with pytest.raises(VQAError, match="float16 or float32"):
        extraction.extract_features(images, backbone, tmp_path / "f64.h5", dtype="float64")


def test_complete_file_for_the_same_inputs_is_reused(tiny_model_path, image_dir, tmp_path):
    images = [(image_id, image_dir / f"{image_id}.jpg") for image_id in range(4)] + [(9, tmp_path / "gone.jpg")]
    backbone = backbone_lib.load_backbone(str(tiny_model_path))
    out = tmp_path / "image_features.h5"
    first = extraction.extract_features(images, backbone, out, batch_size=2)
    batches = backbone.batches_run

    again = extraction.extract_features(images, backbone, out, batch_size=2)

    assert again.reused and backbone.batches_run == batches
    assert again.skipped == first.skipped == {9: "file does not exist"}
    np.testing.assert_array_equal(again.image_ids, first.image_ids)
    fewer = extraction.extract_features(images[:3], backbone, out, batch_size=2)
    assert not fewer.reused and backbone.batches_run == batches + 2
    np.testing.assert_array_equal(features.read_features(out).image_ids, [0, 1, 2])


class Interrupt(Exception):
    pass


def interrupt_after(backbone: backbone_lib.Backbone, batches: int) -> None:
    """Make the backbone fail on its (batches + 1)-th call, as a crash in the middle of a run would."""
    run_batch = backbone.features

    def features_then_crash(images):
        if backbone.batches_run >= batches:
            raise Interrupt
        return run_batch(images)

    backbone.features = features_then_crash


def test_interrupted_run_resumes_without_recomputing(tiny_model_path, image_dir, tmp_path):
    images = [(image_id, image_dir / f"{image_id}.jpg") for image_id in range(12)] + [(50, tmp_path / "gone.jpg")]
    reference = extraction.extract_features(images, backbone_lib.load_backbone(str(tiny_model_path)),
                                          tmp_path / "reference.h5", batch_size=3)
    out = tmp_path / "image_features.h5"
    crashing = backbone_lib.load_backbone(str(tiny_model_path))
    interrupt_after(crashing, batches=2)

    with pytest.raises(Interrupt):
        extraction.extract_features(images, crashing, out, batch_size=3)
    assert not out.exists() and Path(f"{out}.partial").exists()
    backbone = backbone_lib.load_backbone(str(tiny_model_path))
    result = extraction.extract_features(images, backbone, out, batch_size=3)

    assert result.resumed == 6 and result.computed == 6 and backbone.batches_run == 2
    assert result.skipped == reference.skipped == {50: "file does not exist"}
    assert_same_feature_files(out, tmp_path / "reference.h5")


def test_partial_file_of_other_inputs_is_discarded(tiny_model_path, image_dir, tmp_path, caplog):
    out = tmp_path / "image_features.h5"
    crashing = backbone_lib.load_backbone(str(tiny_model_path))
    interrupt_after(crashing, batches=1)
    with pytest.raises(Interrupt):
        extraction.extract_features([(i, image_dir / f"{i}.jpg") for i in range(6)], crashing, out, batch_size=2)
    other_images = [(i, image_dir / f"{i}.jpg") for i in range(1, 7)]
    backbone = backbone_lib.load_backbone(str(tiny_model_path))

    result = extraction.extract_features(other_images, backbone, out, batch_size=2)

    assert "starting feature extraction afresh" in caplog.text and "other images" in caplog.text
    assert result.resumed == 0 and backbone.batches_run == 3
    np.testing.assert_array_equal(features.read_features(out).image_ids, [1, 2, 3, 4, 5, 6])


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vqa import backbone as backbone_lib
    from vqa import extraction

    model_path, image_dir, out_path, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    backbone = backbone_lib.load_backbone(model_path)
    run_batch = backbone.features

    def slow_features(images):
        rows = run_batch(images)
        print("batch", flush=True)
        time.sleep(0.03)
        return rows

    backbone.features = slow_features
    images = [(i, image_dir / f"{i % 12}.jpg") for i in range(count)]
    extraction.extract_features(images, backbone, out_path, batch_size=1, dtype="float32", workers=2)
    print("finished", flush=True)
""")


def test_sigkilled_run_resumes_to_the_same_file(tiny_model_path, image_dir, tmp_path):
    count = 80
    out = tmp_path / "image_features.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VQA_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_model_path), str(image_dir), str(out), str(count)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in child.stdout], daemon=True).start()
    try:
        for _ in range(20):  # let it write about 20 rows, then kill it without warning
            assert lines.get(timeout=120) == "batch", "the extraction finished before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    assert not out.exists()
    with h5py.File(f"{out}.partial", "r") as partial:
        done = int(np.count_nonzero(partial["state"][...]))
    assert 0 < done < count
    backbone = backbone_lib.load_backbone(str(tiny_model_path))
    images = [(i, image_dir / f"{i % 12}.jpg") for i in range(count)]
    result = extraction.extract_features(images, backbone, out, batch_size=1, dtype="float32")

    assert result.resumed == done and backbone.batches_run == count - done
    extraction.extract_features(images, backbone_lib.load_backbone(str(tiny_model_path)), tmp_path / "reference.h5",
                              batch_size=1, dtype="float32")
    assert_same_feature_files(out, tmp_path / "reference.h5")


def assert_same_feature_files(path, other) -> None:
    with h5py.File(path, "r") as f, h5py.File(other, "r") as g:
        assert sorted(f.keys()) == sorted(g.keys()) == ["features", "image_ids"]
        for name in ("image_ids", "features"):
            assert f[name].dtype == g[name].dtype
            np.testing.assert_array_equal(f[name][...], g[name][...])
        assert dict(f.attrs) == dict(g.attrs)


# --- reading and .mat import -----------------------------------------------------------------------


def test_read_features_explains_missing_and_incomplete_files(tmp_path):
    with pytest.raises(VQAError, match="do not exist"):
        features.read_features(tmp_path / "image_features.h5")
    Path(f"{tmp_path / 'image_features.h5'}.partial").write_bytes(b"")
    with pytest.raises(VQAError, match="incomplete"):
        features.read_features(tmp_path / "image_features.h5")
    (tmp_path / "garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n and then nothing")
    with pytest.raises(VQAError, match="not a readable feature file"):
        features.read_features(tmp_path / "garbage.h5")


def test_write_features_round_trips_in_the_stored_dtype(tmp_path):
    spec = backbone_lib.BackboneSpec("keras", "/models/tiny.keras", (32, 32), 3)
    rows = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = features.features_path(tmp_path / "train2014")

    features.write_features(path, [7, 5], rows, spec, skipped={9: "file does not exist"})

    stored = features.read_features(path)
    assert stored.image_ids.dtype == np.int64 and stored.image_ids.tolist() == [7, 5]
    assert stored.features.dtype == np.float16
    np.testing.assert_array_equal(stored.features, rows)
    assert stored.spec == spec == features.read_feature_spec(path) and stored.skipped == {9: "file does not exist"}
    with pytest.raises(VQAError, match="float16 or float32"):
        features.write_features(path, [1], np.zeros((1, 3)), spec)

    whole = path.read_bytes()
    (tmp_path / "truncated.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VQAError, match=r"truncated.h5 are not a readable feature file"):
        features.read_features(tmp_path / "truncated.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["backbone"] = "{not json"
    for read in (features.read_features, features.read_feature_spec):
        with pytest.raises(VQAError, match=str(path)):
            read(path)


@needs_fixture
def test_import_real_neuraltalk_mat_file(tmp_path):
    mat_path = FIXTURE / "features" / "neuraltalk_example_vgg_feats.mat"
    feats = scipy.io.loadmat(mat_path)["feats"]
    assert feats.shape == (4096, 16) and feats.dtype == np.float32
    (tmp_path / "idmap.txt").write_text("192 3\n241 0\n\n257 15\n294 7\n")

    result = matfile.import_mat_features(mat_path, tmp_path / "idmap.txt", [257, 999, 192, 241],
                                          tmp_path / "image_features.h5", dtype="float32")

    assert result.skipped == {999: "not in id map idmap.txt"}
    stored = features.read_features(tmp_path / "image_features.h5")
    image_ids, rows = stored.image_ids, stored.features
    np.testing.assert_array_equal(image_ids, [257, 192, 241])
    np.testing.assert_array_equal(rows, feats[:, [15, 3, 0]].T)
    spec = features.read_feature_spec(tmp_path / "image_features.h5")
    assert (spec.kind, spec.weights, spec.feature_dim) == ("vgg16", "imagenet", 4096)

    matfile.import_mat_features(mat_path, tmp_path / "idmap.txt", [192, 241], tmp_path / "half.h5")
    half = features.read_features(tmp_path / "half.h5").features
    np.testing.assert_array_equal(half, feats[:, [3, 0]].T.astype(np.float16))


@needs_fixture
def test_real_id_map_subset_parses(tmp_path):
    # The fixture's lines point into the full 123,287-column COCO file; against a 16-column file they are out of range.
    with pytest.raises(VQAError, match=r"coco_vgg_IDMap_subset.txt line 1 points image 192 at column 10119"):
        matfile.import_mat_features(FIXTURE / "features" / "neuraltalk_example_vgg_feats.mat",
                                     FIXTURE / "features" / "coco_vgg_IDMap_subset.txt", [192], tmp_path / "f.h5")


def test_import_matlab_v73_hdf5_file(tmp_path):
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((6, 5)).astype(np.float32)  # MATLAB D x N = 6 x 5
    # v7.3 files are HDF5 behind a 512-byte MATLAB header, arrays stored transposed (N x D).
    with h5py.File(tmp_path / "vgg_feats.mat", "w", userblock_size=512) as f:
        f["feats"] = feats.T
    with open(tmp_path / "vgg_feats.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    (tmp_path / "idmap.txt").write_text("10 4\n11 1\n12 4\n")

    result = matfile.import_mat_features(tmp_path / "vgg_feats.mat", tmp_path / "idmap.txt", [12, 10, 11, 13],
                                          tmp_path / "image_features.h5", dtype="float32")

    assert result.skipped == {13: "not in id map idmap.txt"}
    stored = features.read_features(tmp_path / "image_features.h5")
    image_ids, rows = stored.image_ids, stored.features
    np.testing.assert_array_equal(image_ids, [12, 10, 11])
    np.testing.assert_array_equal(rows, feats[:, [4, 4, 1]].T)


def test_import_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "idmap.txt").write_text("1 0\n")
    scipy.io.savemat(tmp_path / "other.mat", {"fc7": np.zeros((4, 2), dtype=np.float32)})
    with pytest.raises(VQAError, match=r"other.mat has no variable 'feats' \(it has \['fc7'\]\)"):
        matfile.import_mat_features(tmp_path / "other.mat", tmp_path / "idmap.txt", [1], tmp_path / "f.h5")
    scipy.io.savemat(tmp_path / "cube.mat", {"feats": np.zeros((4, 2, 2), dtype=np.float32)})
    with pytest.raises(VQAError, match="shape"):
        matfile.import_mat_features(tmp_path / "cube.mat", tmp_path / "idmap.txt", [1], tmp_path / "f.h5")
    scipy.io.savemat(tmp_path / "ok.mat", {"feats": np.zeros((4, 2), dtype=np.float32)})
    (tmp_path / "bad_map.txt").write_text("1 0\n2 x\n")
    with pytest.raises(VQAError, match=r"bad_map.txt line 2 is '2 x'"):
        matfile.import_mat_features(tmp_path / "ok.mat", tmp_path / "bad_map.txt", [1], tmp_path / "f.h5")
    (tmp_path / "twice.txt").write_text("1 0\n1 1\n")
    with pytest.raises(VQAError, match=r"twice.txt line 2 maps image 1 again"):
        matfile.import_mat_features(tmp_path / "ok.mat", tmp_path / "twice.txt", [1], tmp_path / "f.h5")
    with pytest.raises(VQAError, match="does not exist"):
        matfile.import_mat_features(tmp_path / "missing.mat", tmp_path / "idmap.txt", [1], tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists()
