"""Importing region features (vqa.region_import) from the four layouts other projects ship, and their id maps
(vqa.id_maps): the same regions come out of each, bad rows are skipped and named, a pickle never runs code."""

from __future__ import annotations

import base64
import json
import os
import pickle

import h5py
import numpy as np
import pytest

from vqa import id_maps, region_import, regions
from vqa.errors import VQAError

DIM = 8
SPLIT = "train2014"


def make_images(counts=(2, 5, 3, 4), seed=0):
    """{image id: (features (K, DIM) float32, boxes (K, 4) float32, width, height)}, whole-pixel sizes."""
    rng = np.random.default_rng(seed)
    images = {}
    for index, count in enumerate(counts):
        width, height = [(640, 480), (500, 375), (333, 500), (427, 640)][index % 4]
        corners = rng.uniform(0, 0.5, size=(count, 2)) * (width, height)
        sides = rng.uniform(0.1, 0.5, size=(count, 2)) * (width, height)
        boxes = np.round(np.concatenate([corners, corners + sides], axis=1), 1).astype(np.float32)
        images[9 + 11 * index] = (rng.normal(size=(count, DIM)).astype(np.float32), boxes, width, height)
    return images


def tsv_line(image_id, features, boxes, width, height, num_boxes=None):
    encode = lambda array: base64.b64encode(np.asarray(array, np.float32).tobytes()).decode()  # noqa: E731
    return f"{image_id}\t{width}\t{height}\t{len(boxes) if num_boxes is None else num_boxes}\t{encode(boxes)}\t" \
           f"{encode(features)}\n"


def write_tsv_parts(folder, images, parts=2):
    folder.mkdir()
    ids = list(images)
    for part in range(parts):
        chosen = ids[part::parts]
        (folder / f"trainval_36.tsv.{part}").write_text("".join(tsv_line(i, *images[i]) for i in chosen))
    return folder


def spatial(boxes, width, height):
    """hengyuan-hu's spatial features: x1/w, y1/h, x2/w, y2/h, bw/w, bh/h."""
    scaled = boxes / np.array([width, height, width, height], np.float32)
    return np.concatenate([scaled, scaled[:, 2:] - scaled[:, :2]], axis=1).astype(np.float32)


def write_hdf5(path, images, order):
    """hengyuan-hu's fixed layout, images in ``order`` (every image has the same box count)."""
    with h5py.File(path, "w") as f:
        f["image_features"] = np.stack([images[i][0] for i in order])
        f["image_bb"] = np.stack([images[i][1] for i in order])
        f["spatial_features"] = np.stack([spatial(*images[i][1:]) for i in order])
    return {image_id: row for row, image_id in enumerate(order)}


def write_hdf5_adaptive(path, images, order):
    """ban-vqa's adaptive layout: flat boxes, pos_boxes [start, end) per image."""
    counts = [len(images[i][1]) for i in order]
    ends = np.cumsum(counts)
    with h5py.File(path, "w") as f:
        f["image_features"] = np.concatenate([images[i][0] for i in order])
        f["image_bb"] = np.concatenate([images[i][1] for i in order])
        f["spatial_features"] = np.concatenate([spatial(*images[i][1:]) for i in order])
        f["pos_boxes"] = np.stack([ends - counts, ends], axis=1)
    return {image_id: row for row, image_id in enumerate(order)}


def write_npz_folder(folder, images):
    folder.mkdir()
    for index, (image_id, (features, boxes, width, height)) in enumerate(images.items()):
        name = f"COCO_{SPLIT}_{image_id:012d}" + (".jpg.npz" if index % 2 == 0 else ".npz")  # MCAN's, and without .jpg
        np.savez(folder / name, x=features.T, bbox=boxes, num_bbox=len(boxes), image_h=height, image_w=width)
    return folder


def by_id(path):
    """(ids, batch) of a region file, rows read in increasing image id, so files of any row order compare."""
    with regions.RegionReader(path) as reader:
        order = np.argsort(reader.image_ids)
        return reader.image_ids[order], reader.read(order)


def assert_same_regions(paths, images):
    ids, expected = by_id(paths[0])
    assert ids.tolist() == sorted(images)
    for position, image_id in enumerate(ids.tolist()):
        features, boxes, width, height = images[image_id]
        count = len(boxes)
        assert np.array_equal(expected.features[position, :count], features.astype(np.float16))
        assert np.array_equal(expected.boxes[position, :count], boxes)
        assert expected.sizes[position].tolist() == [width, height] and expected.mask[position].sum() == count
    for path in paths[1:]:
        other_ids, batch = by_id(path)
        assert np.array_equal(other_ids, ids), path
        for name in ("features", "boxes", "sizes", "mask"):
            assert np.array_equal(getattr(batch, name), getattr(expected, name)), (path, name)


def test_the_four_layouts_give_the_same_regions(tmp_path, monkeypatch):
    # Small blocks, so the writer appends and the HDF5 sources are read in several blocks.
    monkeypatch.setattr(regions, "_FLUSH_BOXES", 4)
    monkeypatch.setattr(region_import, "_BLOCK_BOXES", 5)
    reads = {}
    real = region_import.read_sorted_rows

    def spy(dataset, rows):
        reads.setdefault((dataset.file.filename, dataset.name), []).extend(rows.tolist())
        return real(dataset, rows)

    monkeypatch.setattr(region_import, "read_sorted_rows", spy)
    images = make_images(counts=(3, 3, 3, 3))
    ids = list(images)
    sources = {"folder": write_tsv_parts(tmp_path / "tsv", images), "npz": write_npz_folder(tmp_path / "npz", images)}
    sources["glob"] = tmp_path / "tsv" / "trainval_36.tsv.*"
    (tmp_path / "hu").mkdir()
    rows = write_hdf5(tmp_path / "hu" / "train36.hdf5", images, order=ids[::-1])  # rows found through the map
    (tmp_path / "hu" / "train36_imgid2idx.pkl").write_bytes(pickle.dumps(rows, protocol=2))
    (tmp_path / "hu" / "val36_imgid2idx.pkl").write_bytes(pickle.dumps({}, protocol=2))  # another split's
    (tmp_path / "hu.json").write_text(json.dumps(rows))
    sources["hdf5"] = sources["hdf5-json"] = tmp_path / "hu" / "train36.hdf5"
    rows = write_hdf5_adaptive(tmp_path / "adaptive.h5", images, order=ids[1:] + ids[:1])
    (tmp_path / "map.json").write_text(json.dumps({str(k): v for k, v in rows.items()}))
    sources["adaptive"] = tmp_path / "adaptive.h5"

    expected_layouts = {"folder": "tsv", "glob": "tsv", "npz": "npz", "hdf5": "hdf5", "hdf5-json": "hdf5",
                        "adaptive": "hdf5-adaptive"}
    id_maps_given = {"hdf5-json": tmp_path / "hu.json", "adaptive": tmp_path / "map.json"}
    paths, lines = [], []
    for name, source in sources.items():
        assert region_import.detect_layout(source) == expected_layouts[name]
        out = tmp_path / "out" / name / regions.FILENAME
        id_map = id_maps_given.get(name)
        result = region_import.import_regions(source, ids + [5], out, SPLIT, id_map=id_map, log=lines.append)
        assert sorted(result.image_ids.tolist()) == sorted(ids) and result.computed == len(ids)
        assert list(result.skipped) == [5] and result.skipped[5].startswith("not in ")
        info = regions.read_region_info(out)
        assert info.layout == expected_layouts[name] and info.skipped == result.skipped and info.max_boxes == 3
        paths.append(out)
    assert_same_regions(paths, images)
    # Each HDF5 dataset read in increasing row order, each row once per import (the hu file is imported twice).
    assert len(reads) == 6 and all(rows == 2 * sorted(set(rows[:len(rows) // 2])) for rows in
                                   (reads[key] for key in reads if "train36" in key[0]))
    assert all(rows == sorted(set(rows)) for key, rows in reads.items() if "adaptive" in key[0])
    assert lines[0] == f"{SPLIT}: regions of 4 images imported from {sources['folder']} (tsv), 1 skipped"


def test_variable_box_counts_across_layouts(tmp_path):
    images = make_images(counts=(2, 5, 3, 4))
    ids = list(images)
    tsv = write_tsv_parts(tmp_path / "tsv", images, parts=1) / "trainval_36.tsv.0"
    rows = write_hdf5_adaptive(tmp_path / "train_adaptive.h5", images, order=ids[::-1])
    (tmp_path / "train_imgid2idx.txt").write_text("# id row\n\n" + "".join(f"{k} {v}\n" for k, v in rows.items()))
    npz = write_npz_folder(tmp_path / "npz", images)
    paths = []
    for index, source in enumerate([tsv, tmp_path / "train_adaptive.h5", npz]):
        paths.append(tmp_path / f"out{index}.h5")
        region_import.import_regions(source, ids, paths[-1], SPLIT, dtype="float32")
    for path in paths:
        ids_read, batch = by_id(path)
        assert ids_read.tolist() == sorted(ids) and batch.features.dtype == np.float32 and batch.mask.shape == (4, 5)
        for position, image_id in enumerate(sorted(ids)):
            features, boxes, width, height = images[image_id]
            assert np.array_equal(batch.features[position, :len(boxes)], features)
            assert np.array_equal(batch.boxes[position, :len(boxes)], boxes)
            assert batch.mask[position].sum() == len(boxes) and batch.sizes[position].tolist() == [width, height]
    with regions.RegionReader(paths[0]) as reader:
        expected = np.stack([images[i][0].mean(axis=0) for i in reader.image_ids.tolist()])
        assert np.allclose(reader.mean_pooled(block=3), expected, atol=1e-6)


def test_bad_tsv_rows_are_skipped_and_named(tmp_path):
    images = make_images(counts=(2, 3, 2, 2, 2, 2, 3))
    ids = list(images)
    lines = [tsv_line(i, *images[i]) for i in ids]
    features, boxes, width, height = images[ids[1]]
    lines[1] = tsv_line(ids[1], features, boxes[:, :3], width, height)  # 9 box values for 3 boxes
    features, boxes, width, height = images[ids[2]]
    lines[2] = tsv_line(ids[2], np.where(features == features[0, 0], np.nan, features), boxes, width, height)
    lines[3] = tsv_line(ids[3], np.zeros(0), np.zeros(0), 640, 480, num_boxes=0)
    features, boxes, width, height = images[ids[4]]
    lines[4] = tsv_line(ids[4], features, boxes + [width, 0, width, 0], width, height)
    features, boxes, width, height = images[ids[5]]
    lines[5] = tsv_line(ids[5], np.where(features == features[1, 1], 70000, features), boxes, width, height)
    lines.insert(0, "not a row at all\n")
    (tmp_path / "bad.tsv").write_text("".join(lines))
    out = tmp_path / "r.h5"
    result = region_import.import_regions(tmp_path / "bad.tsv", ids, out, SPLIT)
    assert result.image_ids.tolist() == [ids[0], ids[6]]
    reasons = result.skipped
    assert "line 3 of bad.tsv has 9 box values and 24 feature values for 3 boxes" in reasons[ids[1]]
    assert reasons[ids[2]] == "NaN or inf in its features" and reasons[ids[3]] == "0 boxes"
    assert "lies outside the 640 x 480 image" in reasons[ids[4]] and "70000 is beyond float16" in reasons[ids[5]]
    assert regions.read_region_info(out).skipped == reasons
    (tmp_path / "all_bad.tsv").write_text("".join(lines[2:4]))
    with pytest.raises(VQAError, match=r"none of the 7 images of train2014 has usable regions in .*all_bad.tsv "
                                       r"\(first reasons: image 9: not in all_bad.tsv; image 20: line 1 of "):
        region_import.import_regions(tmp_path / "all_bad.tsv", ids, tmp_path / "none.h5", SPLIT)
    assert not (tmp_path / "none.h5").exists()


def test_a_tsv_field_longer_than_any_images_boxes_is_refused_naming_its_line(tmp_path):
    """csv would hold a field of any length whole in memory: one over the bound stops the import."""
    from vqa.region_tsv import TSV_FIELD_MAX_BYTES

    images = make_images(counts=(2, 3))
    ids = list(images)
    with open(tmp_path / "long.tsv", "w") as f:
        f.write(tsv_line(ids[0], *images[ids[0]]))
        f.write(f"{ids[1]}\t640\t480\t3\t" + "A" * (TSV_FIELD_MAX_BYTES + 1) + "\n")
    with pytest.raises(VQAError, match=r"long.tsv has a field over 64 MB on line 2, .* not a bottom-up-attention TSV"):
        region_import.import_regions(tmp_path / "long.tsv", ids, tmp_path / "r.h5", SPLIT)
    assert not (tmp_path / "r.h5").exists()


def test_npz_files_that_do_not_load_are_skipped(tmp_path):
    images = make_images(counts=(2, 3, 2))
    folder = write_npz_folder(tmp_path / "npz", images)
    truncated, pickled, good = images
    (folder / f"COCO_{SPLIT}_{truncated:012d}.jpg.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(folder / f"COCO_{SPLIT}_{pickled:012d}.npz", x=np.array([None, 1], dtype=object), bbox=np.zeros((2, 4)),
             num_bbox=2, image_h=1, image_w=1)  # object arrays need pickle to load
    result = region_import.import_regions(folder, list(images), tmp_path / "r.h5", SPLIT)
    assert result.image_ids.tolist() == [good]
    assert result.skipped[truncated].startswith(f"COCO_{SPLIT}_{truncated:012d}.jpg.npz could not be loaded")
    assert result.skipped[pickled].startswith(f"COCO_{SPLIT}_{pickled:012d}.npz could not be loaded")


def test_layouts_and_id_maps_that_cannot_be_used(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(VQAError, match=r"notes is in none of the known layouts; .*\(tsv\).*\(hdf5\).*\(hdf5-adaptive\)"
                                       r".*\(npz\)"):
        region_import.detect_layout(tmp_path / "notes")
    with pytest.raises(VQAError, match="missing does not exist"):
        region_import.detect_layout(tmp_path / "missing")
    images = make_images(counts=(2, 2))
    write_hdf5(tmp_path / "train36.hdf5", images, order=list(images))
    with pytest.raises(VQAError, match="found no train\\*imgid2idx\\* file beside it; pass it with --id-map"):
        region_import.import_regions(tmp_path / "train36.hdf5", list(images), tmp_path / "r.h5", SPLIT)
    (tmp_path / "map.txt").write_text(f"{next(iter(images))} 7\n")
    with pytest.raises(VQAError, match="points image 9 at row 7, but the file has 2 images"):
        region_import.import_regions(tmp_path / "train36.hdf5", list(images), tmp_path / "r.h5", SPLIT,
                                     id_map=tmp_path / "map.txt")


def test_hdf5_edge_cases(tmp_path):
    images = make_images(counts=(2, 2, 2))
    ids = list(images)
    rows = write_hdf5_adaptive(tmp_path / "a.h5", images, order=ids)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["pos_boxes"][1] = [2, 2]  # the second image has no boxes
        del f["spatial_features"]  # sizes then come from the boxes' right and bottom edges
    (tmp_path / "map.json").write_text(json.dumps(rows))
    result = region_import.import_regions(tmp_path / "a.h5", ids, tmp_path / "r.h5", SPLIT,
                                          id_map=tmp_path / "map.json")
    assert result.image_ids.tolist() == [ids[0], ids[2]] and result.skipped == {ids[1]: "0 boxes"}
    with regions.RegionReader(tmp_path / "r.h5") as reader:
        assert reader.read([0]).sizes[0].tolist() == images[ids[0]][1][:, 2:].max(axis=0).tolist()
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["pos_boxes"][2] = [4, 99]
    with pytest.raises(VQAError, match="do not fit together as the hdf5-adaptive layout"):
        region_import.import_regions(tmp_path / "a.h5", ids, tmp_path / "r.h5", SPLIT, id_map=tmp_path / "map.json")


class RunsCode:
    """Unpickles into a shell command: what a hostile id map would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["object", "inside a dict", "a list", "a text key"])
def test_a_pickle_that_would_run_code_or_is_no_plain_dict_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    data = {"object": RunsCode(marker), "inside a dict": {1: RunsCode(marker)}, "a list": [1, 2],
            "a text key": {"COCO": 1}}[payload]
    (tmp_path / "map.pkl").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(VQAError) as error:
        id_maps.read_id_map(tmp_path / "map.pkl")
    assert str(error.value).startswith(f"id map {tmp_path / 'map.pkl'} is not a plain dict of image ids to rows "
                                       "(it would run code or holds other objects);")
    message = str(error.value)
    assert message.endswith(".") and ". " not in message and "\n" not in message  # one sentence
    assert not marker.exists()  # and os.system never ran (the same bytes through pickle.loads would run it)


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles_of_every_protocol_load(tmp_path, protocol):
    (tmp_path / "map.pkl").write_bytes(pickle.dumps({9: 0, 2**40: 1, "20": 2}, protocol=protocol))
    assert id_maps.read_id_map(tmp_path / "map.pkl") == {9: 0, 2**40: 1, 20: 2}


def test_python2_pickles_and_other_forms(tmp_path):
    (tmp_path / "py2.pkl").write_bytes(b"(dp0\nL123L\nI0\nsI456\nL1L\ns.")  # cPickle protocol 0, with longs
    assert id_maps.read_id_map(tmp_path / "py2.pkl") == {123: 0, 456: 1}
    (tmp_path / "py2b.pickle").write_bytes(b"\x80\x02}q\x00(\x8a\x01{K\x00\x8a\x02\xc8\x01K\x01u.")  # protocol 2
    assert id_maps.read_id_map(tmp_path / "py2b.pickle") == {123: 0, 456: 1}
    (tmp_path / "map.json").write_text('{"5": 1, "6": 0}')
    assert id_maps.read_id_map(tmp_path / "map.json") == {5: 1, 6: 0}
    (tmp_path / "bad.json").write_text('{"5": "one"}')
    with pytest.raises(VQAError, match='not a JSON object of "<image id>": row'):
        id_maps.read_id_map(tmp_path / "bad.json")
    (tmp_path / "map.txt").write_text("# COCO id, row\n5 1\n\n6 0  # trailing note\n")
    assert id_maps.read_id_map(tmp_path / "map.txt") == {5: 1, 6: 0}
    (tmp_path / "bad.txt").write_text("5 1\n6 x\n")
    with pytest.raises(VQAError, match=r"bad.txt line 2 is '6 x', not '<image id> <row>'"):
        id_maps.read_id_map(tmp_path / "bad.txt")
    (tmp_path / "twice.txt").write_text("5 1\n5 2\n")
    with pytest.raises(VQAError, match="line 2 maps image 5 again \\(first on line 1\\)"):
        id_maps.read_id_map(tmp_path / "twice.txt")
    with open(tmp_path / "huge.pkl", "wb") as f:
        f.truncate(id_maps.MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(VQAError, match="huge.pkl is 268,435,457 bytes, over its limit of 268,435,456 bytes"):
        id_maps.read_id_map(tmp_path / "huge.pkl")
