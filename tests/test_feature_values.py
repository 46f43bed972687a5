"""Imported features that would train into wrong numbers (vqa.feature_values): NaN or inf rows are skipped and
named, values float16 cannot hold are refused, a grid file that looks transposed is warned about; for the
pytorch-vqa grid import (vqa.grid_import), the neuraltalk .mat import (vqa.matfile) and the region import."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from helpers import THREE_QUESTIONS, preprocess, three_question_items, write_official_split
from vqa import extraction, features, grid_features, grid_import, matfile, region_import, regions, text
from vqa.errors import VQAError


def write_pytorch_vqa(path, image_ids, grids_nchw):
    """A file in the layout of pytorch-vqa's preprocess-images.py: features (N, C, H, W), ids (N,) int32."""
    with h5py.File(path, "w") as f:
        f["features"] = grids_nchw
        f["ids"] = np.asarray(image_ids, np.int32)
    return path


# --- grid import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [2, 64])  # bad rows in several blocks, and all in one
def test_grid_import_skips_and_names_images_with_nan_or_inf(tmp_path, monkeypatch, block):
    monkeypatch.setattr(grid_import, "_IMPORT_BLOCK", block)
    nchw = np.random.default_rng(0).normal(size=(6, 4, 2, 3)).astype(np.float16)
    nchw[1, 2, 1, 0] = np.nan
    nchw[4, 0, 0, 2] = np.inf
    source_ids = [10, 11, 12, 13, 14, 15]
    source = write_pytorch_vqa(tmp_path / "trainval.h5", source_ids, nchw)
    asked = [15, 14, 13, 12, 11, 10, 99]
    out = tmp_path / "grid_features.h5"

    result = grid_import.import_pytorch_vqa(source, asked, out)

    assert result.image_ids.tolist() == [15, 13, 12, 10] and result.computed == 4
    assert result.skipped == {14: "NaN or inf in its grid in trainval.h5", 11: "NaN or inf in its grid in trainval.h5",
                              99: "not in trainval.h5"}
    info = grid_features.read_grid_info(out)
    assert info.skipped == result.skipped and info.image_ids.tolist() == [15, 13, 12, 10]
    with grid_features.GridReader(out) as reader:
        grids = reader.read(np.arange(len(reader)))
    assert np.array_equal(grids, nchw[[5, 3, 2, 0]].transpose(0, 2, 3, 1))


def test_grid_import_refuses_values_float16_would_store_as_inf(tmp_path):
    nchw = np.random.default_rng(1).normal(size=(3, 4, 2, 2)).astype(np.float32)
    nchw[0, :, 0, 0] = 70000.0
    nchw[2, 1, 1, 1] = -1e6
    source = write_pytorch_vqa(tmp_path / "big.h5", [1, 2, 3], nchw)
    with pytest.raises(VQAError) as caught:
        grid_import.import_pytorch_vqa(source, [1, 2, 3], tmp_path / "out.h5")
    message = str(caught.value)
    assert str(source) in message and "5 of 48 values beyond float16's range" in message
    assert "largest 1e+06" in message and "pass --feature-dtype float32" in message and "\n" not in message
    assert not (tmp_path / "out.h5").exists()
    grid_import.import_pytorch_vqa(source, [1, 2, 3], tmp_path / "out.h5", dtype="float32")
    with grid_features.GridReader(tmp_path / "out.h5") as reader:
        assert np.array_equal(reader.read([0, 1, 2]), nchw.transpose(0, 2, 3, 1))


def test_a_grid_file_that_looks_channels_last_is_warned_about(tmp_path):
    channels_last = np.zeros((2, 3, 3, 32), np.float16)  # (N, H, W, C) where (N, C, H, W) is read
    source = write_pytorch_vqa(tmp_path / "nhwc.h5", [1, 2], channels_last)
    warnings = []
    grid_import.import_pytorch_vqa(source, [1, 2], tmp_path / "out.h5", log=warnings.append)
    assert len(warnings) == 1 and str(source) in warnings[0], warnings
    assert "(2, 3, 3, 32)" in warnings[0] and "3 channels of 3 x 32 cells" in warnings[0]
    assert "(N, C, H, W)" in warnings[0] and "\n" not in warnings[0]
    assert grid_features.read_grid_info(tmp_path / "out.h5").shape == (3, 32, 3)  # a warning, not a refusal

    warnings.clear()
    usual = write_pytorch_vqa(tmp_path / "nchw.h5", [1, 2], np.zeros((2, 32, 3, 3), np.float16))
    grid_import.import_pytorch_vqa(usual, [1, 2], tmp_path / "out2.h5", log=warnings.append)
    assert warnings == []


# --- .mat import --------------------------------------------------------------------------------------


def test_mat_import_skips_and_names_images_with_nan_or_inf(tmp_path):
    feats = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)  # MATLAB D x N = 6 x 4
    feats[3, 1] = np.nan
    feats[0, 2] = -np.inf
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": feats})
    (tmp_path / "idmap.txt").write_text("10 0\n11 1\n12 2\n13 3\n")

    result = matfile.import_mat_features(tmp_path / "vgg_feats.mat", tmp_path / "idmap.txt", [13, 12, 11, 10, 14],
                                         tmp_path / "image_features.h5", dtype="float32")

    assert result.skipped == {12: "NaN or inf in its features in vgg_feats.mat",
                              11: "NaN or inf in its features in vgg_feats.mat", 14: "not in id map idmap.txt"}
    stored = features.read_features(tmp_path / "image_features.h5")
    assert stored.image_ids.tolist() == [13, 10] and stored.skipped == result.skipped
    np.testing.assert_array_equal(stored.features, feats[:, [3, 0]].T)


def test_mat_import_refuses_values_float16_would_store_as_inf(tmp_path):
    feats = np.ones((5, 3), np.float32)
    feats[:, 1] = 1e5
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": feats})
    (tmp_path / "idmap.txt").write_text("1 0\n2 1\n3 2\n")
    with pytest.raises(VQAError) as caught:
        matfile.import_mat_features(tmp_path / "vgg_feats.mat", tmp_path / "idmap.txt", [1, 2, 3],
                                    tmp_path / "image_features.h5")
    message = str(caught.value)
    assert str(tmp_path / "vgg_feats.mat") in message and "5 of 15 values beyond float16's range" in message
    assert "pass --feature-dtype float32" in message and not (tmp_path / "image_features.h5").exists()
    matfile.import_mat_features(tmp_path / "vgg_feats.mat", tmp_path / "idmap.txt", [1, 2, 3],
                                tmp_path / "image_features.h5", dtype="float32")
    np.testing.assert_array_equal(features.read_features(tmp_path / "image_features.h5").features, feats.T)


# --- region import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hdf5", "hdf5-adaptive"])
def test_region_import_skips_and_names_images_with_nan_or_inf(tmp_path, layout):
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(3, 2, 4)).astype(np.float32)  # 3 images of 2 boxes of 4-d features
    feats[1, 0, 3] = np.nan
    feats[2, 1, 0] = np.inf
    boxes = np.tile(np.float32([[0, 0, 10, 10], [5, 5, 20, 30]]), (3, 1, 1))
    with h5py.File(tmp_path / "train36.hdf5", "w") as f:
        if layout == "hdf5":
            f["image_features"], f["image_bb"] = feats, boxes
        else:
            f["image_features"], f["image_bb"] = feats.reshape(6, 4), boxes.reshape(6, 4)
            f["pos_boxes"] = np.array([[0, 2], [2, 4], [4, 6]])
    (tmp_path / "train36_imgid2idx.json").write_text('{"7": 0, "8": 1, "9": 2}')
    out = tmp_path / "region_features.h5"

    result = region_import.import_regions(tmp_path / "train36.hdf5", [7, 8, 9], out, "train2014")

    assert result.image_ids.tolist() == [7]
    assert result.skipped == {8: "NaN or inf in its features", 9: "NaN or inf in its features"}
    assert regions.read_region_info(out).skipped == result.skipped


# --- preprocess checks the files to import before extracting anything ----------------------------------


@pytest.fixture
def raw_split(tmp_path, vectors_factory):
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", three_question_items([1, 2]))
    return raw, str(vectors_factory(word for question, _, _ in THREE_QUESTIONS for word in question.split()))


def _no_extraction(monkeypatch):
    def extract(*args, **kwargs):
        raise AssertionError("images were extracted before the file to import was checked")

    monkeypatch.setattr(extraction, "extract_outputs", extract)


@pytest.mark.parametrize("content, words", [
    (None, "is not a readable HDF5 file"),
    ({"ids": np.array([1, 2], np.int32)}, "lacks dataset 'features' or 'ids'"),
    ({"features": np.zeros((2, 8), np.float16), "ids": np.array([1, 2], np.int32)}, "expected (N, C, H, W)"),
])
def test_a_bad_grid_file_is_reported_before_any_extraction(raw_split, tiny_backbone, tmp_path, monkeypatch,
                                                            content, words):
    raw, vectors = raw_split
    bad = tmp_path / "grids.h5"
    if content is None:
        bad.write_text("not HDF5")
    else:
        with h5py.File(bad, "w") as f:
            for name, data in content.items():
                f[name] = data
    _no_extraction(monkeypatch)
    with pytest.raises(VQAError) as caught:
        preprocess(raw, tmp_path / "out", ["train2014"], vectors=vectors, weights=str(tiny_backbone),
                   features="fc7", grid_features=str(bad))
    assert str(bad) in str(caught.value) and words in str(caught.value)
    assert not (tmp_path / "out" / "preprocess.json").exists()


def test_a_bad_mat_file_is_reported_before_any_work(raw_split, tmp_path, monkeypatch):
    raw, vectors = raw_split
    scipy.io.savemat(tmp_path / "other.mat", {"fc7": np.zeros((4, 2), np.float32)})
    (tmp_path / "idmap.txt").write_text("1 0\n2 1\n")

    def no_text_steps(*args, **kwargs):
        raise AssertionError("questions were tokenised before the .mat file was checked")

    monkeypatch.setattr(text, "load_pipeline", no_text_steps)
    with pytest.raises(VQAError, match=r"other.mat has no variable 'feats' \(it has \['fc7'\]\)"):
        preprocess(raw, tmp_path / "out", ["train2014"], vectors=vectors, features_mat=str(tmp_path / "other.mat"),
                   id_map=str(tmp_path / "idmap.txt"))
    scipy.io.savemat(tmp_path / "narrow.mat", {"feats": np.zeros((4, 1), np.float32)})
    with pytest.raises(VQAError, match=r"idmap.txt line 2 points image 2 at column 1, but .*narrow.mat has only 1"):
        preprocess(raw, tmp_path / "out", ["train2014"], vectors=vectors, features_mat=str(tmp_path / "narrow.mat"),
                   id_map=str(tmp_path / "idmap.txt"))
    assert not (tmp_path / "out" / "preprocess.json").exists()


def test_an_hdf5_region_file_without_its_id_map_is_reported_before_any_extraction(raw_split, tiny_backbone,
                                                                                  tmp_path, monkeypatch):
    raw, vectors = raw_split
    with h5py.File(tmp_path / "train36.hdf5", "w") as f:
        f["image_features"], f["image_bb"] = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32)
    _no_extraction(monkeypatch)
    with pytest.raises(VQAError, match=r"train36.hdf5 need the map of image ids to rows and found no "
                                       r"train\*imgid2idx\* file beside it; pass it with --id-map"):
        preprocess(raw, tmp_path / "out", ["train2014"], vectors=vectors, weights=str(tiny_backbone),
                   features="fc7", regions=str(tmp_path / "train36.hdf5"))
    with h5py.File(tmp_path / "train36.hdf5", "a") as f:
        del f["image_bb"]
        f["image_bb"] = np.zeros((2, 2, 4), np.float32)  # boxes that do not fit the features
    (tmp_path / "train36_imgid2idx.json").write_text('{"1": 0, "2": 1}')
    with pytest.raises(VQAError, match=r"image_bb \(2, 2, 4\), .* that do not fit together as the hdf5 layout"):
        preprocess(raw, tmp_path / "out", ["train2014"], vectors=vectors, weights=str(tiny_backbone),
                   features="fc7", regions=str(tmp_path / "train36.hdf5"))


@pytest.mark.parametrize("keep", [100, 200, -10])
def test_a_cut_off_mat_file_is_a_sentence_about_the_file_not_scipys_words(tmp_path, keep):
    scipy.io.savemat(tmp_path / "whole.mat", {"feats": np.ones((64, 50), np.float32)})
    (tmp_path / "vgg_feats.mat").write_bytes((tmp_path / "whole.mat").read_bytes()[:keep])
    (tmp_path / "idmap.txt").write_text("1 0\n2 1\n")
    with pytest.raises(VQAError) as caught:
        matfile.import_mat_features(tmp_path / "vgg_feats.mat", tmp_path / "idmap.txt", [1, 2], tmp_path / "f.h5")
    message = str(caught.value)
    assert str(tmp_path / "vgg_feats.mat") in message and "cut off or damaged" in message, message
    assert "index out of range" not in message and "could not read bytes" not in message
