"""Grid-feature files (vqa.grid_features): layout, sorted batch reads, mean pooling; the pytorch-vqa import
(vqa.grid_import); and sharded fc7 extraction merged into the file an unsharded run writes (vqa.extraction)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from vqa import backbone as backbone_lib
from vqa import extraction, features, grid_features, grid_import
from vqa.errors import VQAError

SPEC = backbone_lib.BackboneSpec(kind="vgg16", weights="imagenet", image_size=(224, 224), feature_dim=4096)


def make_grids(num_images=5, shape=(3, 2, 4), seed=0):
    rng = np.random.default_rng(seed)
    return (100 + np.arange(num_images, dtype=np.int64),
            rng.normal(0, 1, size=(num_images, *shape)).astype(np.float16))


def write_pytorch_vqa(path, image_ids, grids_nchw, **overrides):
    """A file in the layout of pytorch-vqa's preprocess-images.py: features (N, C, H, W) float16, ids (N,) int32."""
    with h5py.File(path, "w") as f:
        datasets = {"features": grids_nchw.astype(np.float16), "ids": np.asarray(image_ids, np.int32), **overrides}
        for name, data in datasets.items():
            if data is not None:
                f.create_dataset(name, data=data)
    return path


# --- the grid file ----------------------------------------------------------------------------------


def test_round_trip_with_one_image_per_chunk(tmp_path):
    ids, grids = make_grids()
    path = grid_features.grid_path(tmp_path)
    grid_features.write_grids(path, ids, grids, SPEC, "block5_pool", skipped={7: "unreadable"})
    assert path.name == "grid_features.h5"
    with h5py.File(path, "r") as f:
        assert f["features"].chunks == (1, 3, 2, 4) and f["features"].dtype == np.float16
        assert f["features"].compression is None and f["image_ids"].dtype == np.int64
    info = grid_features.read_grid_info(path)
    assert info.shape == (3, 2, 4) and info.layer == "block5_pool" and info.spec == SPEC
    assert info.skipped == {7: "unreadable"} and info.source == "" and np.array_equal(info.image_ids, ids)
    with grid_features.GridReader(path) as reader:
        assert np.array_equal(reader.read(np.arange(5)), grids) and len(reader) == 5
    grid_features.write_grids(tmp_path / "empty.h5", [], np.zeros((0, 3, 2, 4), np.float16), SPEC, "block5_pool")
    with grid_features.GridReader(tmp_path / "empty.h5") as reader:
        assert reader.shape == (3, 2, 4) and reader.read([]).shape == (0, 3, 2, 4)
        assert reader.mean_pooled().shape == (0, 4)


def test_read_sorts_dedups_and_fills_missing_rows(tmp_path, monkeypatch):
    ids, grids = make_grids(num_images=8)
    path = tmp_path / "grid_features.h5"
    grid_features.write_grids(path, ids, grids, SPEC, "block5_pool")
    asked = []
    real = grid_features.read_sorted_rows

    def spy(dataset, rows):
        asked.append(rows.copy())
        return real(dataset, rows)

    monkeypatch.setattr(grid_features, "read_sorted_rows", spy)
    rows = np.array([6, 1, -1, 6, 3, 1, 0])
    with grid_features.GridReader(path) as reader:
        batch = reader.read(rows)
        with pytest.raises(IndexError):
            reader.read([8])
    assert len(asked) == 1 and asked[0].tolist() == [0, 1, 3, 6]  # distinct rows, increasing
    assert batch.dtype == np.float16 and batch.shape == (7, 3, 2, 4)
    assert np.array_equal(batch[rows >= 0], grids[rows[rows >= 0]]) and not batch[2].any()


def test_mean_pooled_is_numpys_mean_block_by_block(tmp_path):
    ids, grids = make_grids(num_images=7, shape=(4, 3, 5))
    path = tmp_path / "grid_features.h5"
    grid_features.write_grids(path, ids, grids, SPEC, "block5_pool")
    with grid_features.GridReader(path) as reader:
        pooled = reader.mean_pooled(block=3)
        assert np.array_equal(pooled, reader.mean_pooled(block=256))
    assert pooled.dtype == np.float32 and pooled.shape == (7, 5)
    np.testing.assert_allclose(pooled, grids.astype(np.float32).mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)


def test_bad_grid_files_are_one_sentence_naming_the_file(tmp_path):
    ids, grids = make_grids()
    good = tmp_path / "good.h5"
    grid_features.write_grids(good, ids, grids, SPEC, "block5_pool")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:1500])
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    no_layer = tmp_path / "no_layer.h5"
    no_layer.write_bytes(good.read_bytes())
    with h5py.File(no_layer, "r+") as f:
        del f.attrs["layer"]
    flat = tmp_path / "flat.h5"
    features.write_features(flat, ids, grids.reshape(5, -1), SPEC)  # an fc7-style file, not a grid file
    (tmp_path / "partial.h5.partial").write_bytes(b"")
    cases = {"missing.h5": "do not exist", "partial.h5": "incomplete", "truncated.h5": "not a readable grid file",
             "text.h5": "not a readable grid file", "no_layer.h5": "not a readable grid file",
             "flat.h5": "not a readable grid file"}
    for name, words in cases.items():
        for open_it in (grid_features.read_grid_info, grid_features.GridReader):
            with pytest.raises(VQAError) as caught:
                open_it(tmp_path / name)
            message = str(caught.value)
            assert str(tmp_path / name) in message and words in message and "\n" not in message, message


# --- pytorch-vqa import ------------------------------------------------------------------------------


def test_import_pytorch_vqa_reorders_transposes_and_reports_missing_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(grid_import, "_IMPORT_BLOCK", 2)  # several blocks, one of them not contiguous
    rng = np.random.default_rng(3)
    source_ids = [42, 7, 13, 99, 5]
    nchw = rng.normal(0, 1, size=(5, 6, 3, 2)).astype(np.float16)  # C=6, H=3, W=2
    source = write_pytorch_vqa(tmp_path / "trainval.h5", source_ids, nchw)
    asked = [99, 1234, 7, 5, 42]  # another order than the file's, and one id it lacks
    out = tmp_path / "train2014" / "grid_features.h5"
    result = grid_import.import_pytorch_vqa(source, asked, out)
    assert result.path == out and result.image_ids.tolist() == [99, 7, 5, 42] and result.computed == 4
    assert result.skipped == {1234: "not in trainval.h5"}
    info = grid_features.read_grid_info(out)
    assert info.shape == (3, 2, 6) and info.skipped == result.skipped and info.layer == "imported"
    assert info.spec == backbone_lib.BackboneSpec.for_import(source.resolve(), 6) and not info.spec.has_model
    assert info.source == str(source.resolve())
    with grid_features.GridReader(out) as reader:
        grids = reader.read(np.arange(4))
    expected = nchw[[source_ids.index(i) for i in (99, 7, 5, 42)]].transpose(0, 2, 3, 1)
    assert np.array_equal(grids, expected)
    with h5py.File(out, "r") as f:
        assert f["features"].chunks == (1, 3, 2, 6)


def test_bad_pytorch_vqa_files_are_one_sentence(tmp_path):
    nchw = np.zeros((3, 2, 2, 2), np.float16)
    (tmp_path / "text.h5").write_text("hello")
    good = write_pytorch_vqa(tmp_path / "good.h5", [1, 2, 3], np.ones((3, 64, 8, 8), np.float16))
    (tmp_path / "truncated.h5").write_bytes(good.read_bytes()[:-4000])
    cases = {
        "missing.h5": (None, "do not exist"),
        "truncated.h5": (None, "not a readable HDF5 file"),
        "text.h5": (None, "not a readable HDF5 file"),
        "no_ids.h5": ({"ids": None}, "lacks dataset 'features' or 'ids'"),
        "flat.h5": ({"features": np.zeros((3, 8), np.float16)}, "expected (N, C, H, W)"),
        "short_ids.h5": ({"ids": np.array([1, 2], np.int32)}, "2 ids for 3 feature rows"),
        "repeated.h5": ({"ids": np.array([1, 2, 1], np.int32)}, "image 1 more than once"),
    }
    for name, (overrides, words) in cases.items():
        if overrides is not None:
            write_pytorch_vqa(tmp_path / name, [1, 2, 3], nchw, **overrides)
        with pytest.raises(VQAError) as caught:
            grid_import.import_pytorch_vqa(tmp_path / name, [1, 2], tmp_path / "out.h5")
        message = str(caught.value)
        assert str(tmp_path / name) in message and words in message and "\n" not in message, message
    assert not (tmp_path / "out.h5").exists()


def test_import_spec_round_trips_through_json():
    spec = backbone_lib.BackboneSpec.for_import("/data/trainval.h5", 2048)
    assert backbone_lib.BackboneSpec.from_dict(json.loads(spec.to_json())) == spec
    assert spec.kind in backbone_lib.KINDS and spec.image_size is None
    with pytest.raises(VQAError, match="imported"):
        backbone_lib.Backbone.from_spec(spec)


# --- sharded fc7 extraction ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """Eleven small JPEGs and one unreadable file, as (id, path) pairs in a shuffled id order."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    images = []
    for image_id in [5, 3, 11, 0, 8, 1, 9, 4, 10, 2, 7]:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
        images.append((image_id, folder / f"{image_id}.jpg"))
    (folder / "6.jpg").write_text("not a JPEG")
    images.insert(4, (6, folder / "6.jpg"))
    return images


def attrs_of(path):
    with h5py.File(path, "r") as f:
        return dict(f.attrs), f["image_ids"][...], f["features"][...]


def test_three_shards_merge_into_the_unsharded_file(tiny_backbone, tiny_images, tmp_path):
    backbone = backbone_lib.load_backbone(str(tiny_backbone))
    whole = extraction.extract_features(tiny_images, backbone, tmp_path / "whole" / "image_features.h5",
                                        batch_size=2)
    out = tmp_path / "sharded" / "image_features.h5"
    shards = [extraction.extract_features(tiny_images, backbone, out, batch_size=2, shard=(index, 3))
              for index in range(3)]
    assert [s.path.name for s in shards] == [f"image_features.h5.shard-{i}-of-3" for i in range(3)]
    assert sum(len(s.image_ids) for s in shards) == len(whole.image_ids)
    assert extraction.extract_features(tiny_images, backbone, out, batch_size=2, shard=(1, 3)).reused

    (tmp_path / "keep").mkdir()
    shards[2].path.rename(tmp_path / "keep" / "shard2")
    with pytest.raises(VQAError, match=f"shard {shards[2].path} is missing"):
        extraction.merge_shards(tiny_images, out, 3)
    (tmp_path / "keep" / "shard2").rename(shards[2].path)
    with pytest.raises(VQAError, match=f"shard {shards[0].path} belongs to another extraction"):
        extraction.merge_shards(tiny_images[:-1], out, 3)
    with pytest.raises(VQAError, match="is missing"):
        extraction.merge_shards(tiny_images, out, 2)
    with pytest.raises(VQAError, match=f"holds shards of a 1000000000-way split of {len(tiny_images)} images"):
        extraction.merge_shards(tiny_images, out, 10**9)  # at once, not a wait on a billion file names

    merged = extraction.merge_shards(tiny_images, out, 3)
    assert not any(s.path.exists() for s in shards) and merged.skipped == whole.skipped == {6: merged.skipped[6]}
    merged_attrs, merged_ids, merged_rows = attrs_of(out)
    whole_attrs, whole_ids, whole_rows = attrs_of(whole.path)
    assert merged_attrs == whole_attrs and np.array_equal(merged_ids, whole_ids)
    assert merged_rows.dtype == whole_rows.dtype and merged_rows.tobytes() == whole_rows.tobytes()
    assert np.array_equal(merged.image_ids, whole.image_ids)
    assert extraction.merge_shards(tiny_images, out, 3).reused


def test_bad_shard_numbers_are_refused():
    for shard in [(3, 3), (-1, 2), ("a", 2), (0, 0)]:
        with pytest.raises(VQAError, match="INDEX/COUNT"):
            extraction.check_shard(shard)
    assert extraction.check_shard((1, 3), num_batches=3) == (1, 3)
    with pytest.raises(VQAError, match="splits 3 batches of images into more shards than batches; pass a COUNT "
                                       "of at most 3"):
        extraction.check_shard((0, 4), num_batches=3)
    assert extraction.shard_positions(7, 2, 0, 2).tolist() == [0, 1, 4, 5]  # whole batches of 2
    assert extraction.shard_positions(7, 2, 1, 2).tolist() == [2, 3, 6]
