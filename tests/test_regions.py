"""Region-feature files (vqa.regions): the layout, row checks, padded batch reads, mean pooling, box geometry."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vqa import regions
from vqa.errors import VQAError

DIM = 8


def make_images(counts=(2, 5, 3), seed=0):
    """[(image id, features (K, DIM) float32, boxes (K, 4), width, height)], boxes inside their image."""
    rng = np.random.default_rng(seed)
    images = []
    for index, count in enumerate(counts):
        width, height = 100.0 + 10 * index, 80.0 + 5 * index
        corners = rng.uniform(0, 0.5, size=(count, 2)) * (width, height)
        sides = rng.uniform(0.1, 0.5, size=(count, 2)) * (width, height)
        boxes = np.concatenate([corners, corners + sides], axis=1).astype(np.float32)
        images.append((100 + index, rng.normal(size=(count, DIM)).astype(np.float32), boxes, width, height))
    return images


def write_file(path, images, dtype="float16", **options):
    with regions.RegionWriter(path, DIM, dtype=dtype, **options) as writer:
        for image in images:
            assert writer.add(*image) is None
    return path


def test_file_layout_and_info(tmp_path):
    images = make_images()
    path = regions.region_path(tmp_path)
    with regions.RegionWriter(path, DIM, source="/data/x.tsv", layout="tsv") as writer:
        for image in images:
            writer.add(*image)
        writer.skip(7, "not in x.tsv")
        assert not path.exists()  # written under a temporary name until the end
    assert path.name == "region_features.h5"
    with h5py.File(path, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (10, DIM)
        assert f["features"].chunks == (64, DIM) and f["features"].compression is None
        assert f["offsets"][...].tolist() == [0, 2, 7, 10] and f["boxes"].dtype == np.float32
        assert f["image_sizes"][...].tolist() == [[100, 80], [110, 85], [120, 90]]
        assert f.attrs["format_version"] == 1
    info = regions.read_region_info(path)
    assert info.image_ids.tolist() == [100, 101, 102] and info.feature_dim == DIM
    assert (info.max_boxes, info.total_boxes, info.dtype) == (5, 10, "float16")
    assert info.skipped == {7: "not in x.tsv"} and (info.source, info.layout) == ("/data/x.tsv", "tsv")


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "region_features.h5"
    with pytest.raises(RuntimeError):
        with regions.RegionWriter(path, DIM) as writer:
            writer.add(*make_images()[0])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_bad_rows_are_refused_with_a_reason(tmp_path):
    (image_id, features, boxes, width, height), *_ = make_images()
    check = regions.check_row
    assert check(features, boxes, width, height, DIM) is None
    assert "size 9, not 8" in check(np.zeros((2, 9)), boxes, width, height, DIM)
    assert check(features[:0], boxes[:0], width, height, DIM) == "0 boxes"
    assert "NaN" in check(np.where(features == features[0, 0], np.nan, features), boxes, width, height, DIM)
    assert "NaN or inf in its boxes" == check(features, boxes * np.inf, width, height, DIM)
    assert "not positive" in check(features, boxes, 0, height, DIM)
    big = features.copy()
    big[1, 3] = 70000
    assert "70000 is beyond float16" in check(big, boxes, width, height, DIM)
    assert check(big, boxes, width, height, DIM, dtype="float32") is None
    # A box may stick out by max(2 px, 1% of the side): 2 px on a 100-px side, 10 px on a 1000-px one.
    assert check(features[:1], [[0, 0, 102, 10]], 100, 100, DIM) is None
    assert "box 0 (0, 0, 103, 10) lies outside the 100 x 100 image" == check(features[:1], [[0, 0, 103, 10]], 100,
                                                                              100, DIM)
    assert check(features[:1], [[-9, 0, 1009, 10]], 1000, 100, DIM) is None
    assert "inverted" in check(features[:1], [[5, 0, 4, 10]], 100, 100, DIM)

    with regions.RegionWriter(tmp_path / "r.h5", DIM) as writer:
        assert "70000" in writer.add(image_id, big, boxes, width, height)
        assert writer.add(image_id, features, boxes, width, height) is None  # a good row after a bad one wins
        assert "appears again" in writer.add(image_id, features + 1, boxes, width, height)
        writer.skip(image_id, "ignored: it has a row")
        assert "0 boxes" == writer.add(5, features[:0], boxes[:0], width, height)
    info = regions.read_region_info(tmp_path / "r.h5")
    assert info.image_ids.tolist() == [image_id] and info.skipped == {5: "0 boxes"}
    with regions.RegionReader(tmp_path / "r.h5") as reader:  # the first good row was kept
        assert np.array_equal(reader.read([0]).features[0], features.astype(np.float16))


def test_read_orders_pads_and_masks(tmp_path, monkeypatch):
    images = make_images()
    path = write_file(tmp_path / "r.h5", images, dtype="float32")
    asked = []
    real = regions.read_sorted_rows

    def spy(dataset, rows):
        asked.append(rows.tolist())
        return real(dataset, rows)

    monkeypatch.setattr(regions, "read_sorted_rows", spy)
    with regions.RegionReader(path) as reader:
        assert len(reader) == 3 and reader.max_boxes == 5 and reader.feature_dim == DIM
        batch = reader.read([2, -1, 0])
        assert asked == [[0, 1, 7, 8, 9]] * 2  # features then boxes: the boxes of images 0 and 2, increasing
        assert batch.features.shape == (3, 3, DIM) and batch.features.dtype == np.float32  # Kb = 3, not 5
        assert batch.mask.tolist() == [[True, True, True], [False] * 3, [True, True, False]]
        assert np.array_equal(batch.features[0], images[2][1]) and np.array_equal(batch.boxes[0], images[2][2])
        assert np.array_equal(batch.features[2, :2], images[0][1]) and not batch.features[2, 2].any()
        assert not batch.features[1].any() and not batch.boxes[1].any()
        assert batch.sizes.tolist() == [[120, 90], [0, 0], [100, 80]]
        repeated = reader.read(np.array([1, 1]))
        assert repeated.features.shape == (2, 5, DIM) and repeated.mask.all()
        assert reader.read([-1]).mask.shape == (1, 1) and reader.read([]).features.shape == (0, 1, DIM)
        with pytest.raises(IndexError):
            reader.read([3])


def test_mean_pooled_is_numpys_mean_block_by_block(tmp_path):
    images = make_images(counts=(2, 5, 3, 1, 4))
    path = write_file(tmp_path / "r.h5", images)
    expected = np.stack([features.astype(np.float16).astype(np.float32).mean(axis=0) for _, features, *_ in images])
    with regions.RegionReader(path) as reader:
        for block in (1, 2, 256):
            assert np.allclose(reader.mean_pooled(block=block), expected, atol=1e-6)
        assert reader.mean_pooled().dtype == np.float32


def test_unreadable_files_are_one_sentence(tmp_path):
    with pytest.raises(VQAError, match="do not exist"):
        regions.RegionReader(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(VQAError, match="junk.h5 are not a readable region file"):
        regions.RegionReader(tmp_path / "junk.h5")
    path = write_file(tmp_path / "r.h5", make_images())
    with h5py.File(path, "r+") as f:
        f["offsets"][-1] = 99
    with pytest.raises(VQAError, match="r.h5 are not a readable region file"):
        regions.read_region_info(path)


def test_geometry_by_hand():
    boxes = np.array([[[10, 20, 60, 70], [0, 0, 0, 0]]], dtype=np.float32)
    sizes = np.array([[100, 200]], dtype=np.float32)
    geometry = regions.geometry(boxes, sizes, np.array([[True, False]]))
    # x1/w = 0.1, y1/h = 0.1, x2/w = 0.6, y2/h = 0.35, area = 50 * 50 / (100 * 200) = 0.125
    assert geometry.dtype == np.float32 and geometry.shape == (1, 2, 5)
    assert np.allclose(geometry[0, 0], [0.1, 0.1, 0.6, 0.35, 0.125]) and not geometry[0, 1].any()
    sticking_out = regions.geometry(np.array([[[-2, 0, 102, 10]]]), np.array([[100, 100]]), np.ones((1, 1), bool))
    assert np.allclose(sticking_out[0, 0], [0, 0, 1, 0.1, 0.1])  # clipped to the image: 100 x 10 of 100 x 100


def test_cell_boxes_are_row_major():
    boxes = regions.cell_boxes(2, 3, image_w=30, image_h=20)
    assert boxes.shape == (6, 4) and boxes.dtype == np.float32
    assert boxes[0].tolist() == [0, 0, 10, 10] and boxes[1].tolist() == [10, 0, 20, 10]
    assert boxes[5].tolist() == [20, 10, 30, 20]
    assert regions.cell_boxes(1, 1).tolist() == [[0, 0, 1, 1]]


def test_region_batches_keep_one_shape_whatever_their_box_counts(tmp_path):
    """Keras' TensorFlow adapter fixes a batch's shape from the first batches: 20 boxes then 3 must not change it."""
    import keras

    from vqa import dataset, registry
    from vqa.bench.regions import write_synthetic_region_out
    from vqa.bench.synthetic import SPLIT
    from vqa.config import ModelConfig
    from vqa.losses import make_loss
    from vqa.names import REGION_FEATURES, REGION_MASK
    from vqa.streamed_batches import StreamedBatches
    from vqa.text import read_embeddings
    from vqa.visual import VisualSpec

    out = write_synthetic_region_out(tmp_path, 16, 16, 8, (3, 3))
    with regions.RegionWriter(regions.region_path(out / SPLIT), 8) as writer:
        for image_id in range(16):
            count = 20 if image_id < 8 else 3
            writer.add(image_id, np.ones((count, 8)), np.tile([0, 0, 10, 10], (count, 1)), 64, 64)
    data = dataset.load_split(out, SPLIT, "regions")
    batches = StreamedBatches(data, 4, 1000, training=False)
    try:
        shapes = {batches[i][0][REGION_FEATURES].shape for i in range(len(batches))}
        assert shapes == {(4, 20, 8)}
        assert batches[3][0][REGION_MASK].sum(axis=1).tolist() == [3, 3, 3, 3]
        keras.utils.set_random_seed(0)
        model = registry.build_model(ModelConfig(name="multi-glimpse", lstm_units=4, lstm_layers=1, hidden_units=4,
                                                 fusion_units=4), read_embeddings(out), 1000,
                                     VisualSpec("regions", (8,)), data.max_length, "sigmoid")
        model.compile("adam", make_loss("soft"))
        model.fit(batches, epochs=1, verbose=0)  # stopped with a TypeError when K followed each batch
    finally:
        batches.close()
        data.close()
