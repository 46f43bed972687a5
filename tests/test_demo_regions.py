"""The demo's region steps: stand-in region features from the demo CNN, and where a region model's attention looks.

``vqa.demo.crop_regions`` is checked against the CNN run by hand on one crop; ``region_pointing``
on an updown run trained on the label stand-ins (``vqa.demo.label_regions``: features that say
what each box holds, so the colour questions are answerable only by attending to the named
object's box), and shown to fail when the val boxes are moved to other regions of their image.
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from vqa import regions
from vqa import train as vqa_train
from vqa.config import Config, ModelConfig, TrainConfig
from vqa.demo import data as demo_data
from vqa.demo.crop_regions import regions_file, write_crop_regions
from vqa.demo.label_regions import write_label_regions
from vqa.demo.pointing import REGION_IOU, box_iou, region_pointing
from vqa.errors import VQAError
from vqa.region_import import import_regions
from vqa.storage import read_json
from vqa.text import blank_tokenizer, tokenize

from helpers import preprocess

pytestmark = pytest.mark.slow


def test_crop_regions_are_the_cnn_on_each_labelled_box_and_a_few_random_ones(tmp_path, tiny_backbone):
    raw, tsv_dir = tmp_path / "raw", tmp_path / "tsv"
    demo_data.write_demo_dataset(raw, train_images=6, val_images=3, seed=2)
    written = write_crop_regions(raw, tiny_backbone, tsv_dir, background=2, batch_size=5, verbose=False)
    assert written == {split: regions_file(tsv_dir, split) for split in demo_data.SPLITS}
    assert sorted(p.name for p in tsv_dir.iterdir()) == ["train2014_regions.tsv", "val2014_regions.tsv"]

    scenes = demo_data.read_scenes(raw)["val2014"]
    region_file = tmp_path / "val_regions.h5"
    import_regions(tsv_dir, sorted(scenes), region_file, "val2014", dtype="float32", show_progress=False)
    cnn = keras.saving.load_model(tiny_backbone, safe_mode=True)
    with regions.RegionReader(region_file) as reader:
        assert reader.feature_dim == cnn.output_shape[-1] and list(reader.image_ids) == sorted(scenes)
        batch = reader.read(np.arange(len(reader)))
    for row, image_id in enumerate(sorted(scenes)):
        objects = scenes[image_id]
        assert batch.mask[row].sum() == len(objects) + 2
        assert batch.boxes[row, :len(objects)].tolist() == [obj["box"] for obj in objects]
    # The first object of the first image, cropped and resized to the CNN's 32 x 32 input by hand.
    image_id = sorted(scenes)[0]
    with Image.open(raw / "val2014" / f"COCO_val2014_{image_id:012d}.jpg") as image:
        crop = image.convert("RGB").crop(tuple(scenes[image_id][0]["box"])).resize((32, 32), Image.Resampling.BILINEAR)
    expected = cnn.predict(np.asarray(crop, np.float32)[None], verbose=0)[0]
    np.testing.assert_allclose(batch.features[0, 0], expected, rtol=1e-4, atol=1e-5)

    # A finished split is not written again, so an interrupted demo resumes.
    stamps = {path: path.stat().st_mtime_ns for path in written.values()}
    assert write_crop_regions(raw, tiny_backbone, tsv_dir, verbose=False) == written
    assert {path: path.stat().st_mtime_ns for path in written.values()} == stamps


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


@pytest.fixture(scope="module")
def region_run(tmp_path_factory, vectors_factory):
    """The demo dataset with the label stand-in regions, preprocessed with no image, and an updown run on it."""
    root = tmp_path_factory.mktemp("region_pointing")
    raw, out = root / "raw", root / "processed"
    demo_data.write_demo_dataset(raw, train_images=300, val_images=80, seed=0)
    write_label_regions(raw, root / "tsv", dim=16)
    words = set()
    for split in demo_data.SPLITS:
        questions = read_json(raw / f"v2_OpenEnded_mscoco_{split}_questions.json", "demo questions")["questions"]
        for tokens in tokenize(blank_tokenizer("en"), [q["question"] for q in questions]):
            words.update(tokens)
    preprocess(raw, out, vectors=str(vectors_factory(words)), regions=str(root / "tsv"), max_question_length=13)
    run = root / "run"
    config = Config(model=ModelConfig(name="updown", question_rnn="gru", hidden_units=128, dropout=0.0),
                    train=TrainConfig(epochs=12, batch_size=32, learning_rate=0.003, early_stopping_patience=0,
                                      min_batches=0, seed=0))
    vqa_train.train(out, run, config, log=lambda line: None)
    return raw, out, run


def test_updown_picks_the_named_objects_box(region_run):
    raw, out, run = region_run
    pointing = region_pointing(run, out, raw)
    assert pointing.grid is None and pointing.questions >= 30
    assert pointing.rate >= 0.8, pointing


def test_the_check_fails_when_the_boxes_are_moved_to_other_regions(region_run, tmp_path):
    """Each val box is moved to the next region of its image (features stay): the model still attends to the
    named object's features, whose box is now another one."""
    raw, out, run = region_run
    shuffled = tmp_path / "processed"
    shutil.copytree(out, shuffled)
    path = regions.region_path(shuffled / "val2014")
    with regions.RegionReader(path) as reader:
        info, batch = reader.info, reader.read(np.arange(len(reader)))
    path.unlink()
    with regions.RegionWriter(path, info.feature_dim, info.dtype, source=info.source, layout=info.layout) as writer:
        for image_id, features, boxes, size, mask in zip(info.image_ids, batch.features, batch.boxes, batch.sizes,
                                                          batch.mask):
            count = int(mask.sum())
            writer.add(int(image_id), features[:count], np.roll(boxes[:count], 1, axis=0), *size)
    assert region_pointing(run, shuffled, raw).rate < 0.5


def test_a_grid_run_is_refused_in_one_sentence(region_run, tmp_path):
    raw, out, run = region_run
    copy = tmp_path / "grid_run"
    shutil.copytree(run, copy)
    described = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**described, "features": "grid"}))
    with pytest.raises(VQAError, match="reads grid image features, not the region boxes"):
        region_pointing(copy, out, raw)
    assert REGION_IOU == 0.5
