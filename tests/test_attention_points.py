"""Attention points at the object: on demo scenes, "What color is the {shape}?" attends inside that shape's box.

The demo dataset (``vqa.demo.data``) is preprocessed as usual; each split then gets a 4 x 4
grid file made from the generator's scene labels: a cell holds the one-hot colour and
shape of the object covering its centre, plus noise. Nothing in a cell says which cells
the questions name, so a multi-glimpse model answers the colour questions only by
attending to the cell of the named shape, and ``attention_pointing`` checks, against the
generator's boxes, that its highest-weight cell lies inside that shape's box.
"""

from __future__ import annotations

import numpy as np
import pytest

from vqa import grid_features, split_files
from vqa import train as vqa_train
from vqa.config import Config, ModelConfig, TrainConfig
from vqa.demo import data as demo_data
from vqa.demo.pointing import attention_pointing, cell_centres
from vqa.text import blank_tokenizer, tokenize

from helpers import TINY_BACKBONE, preprocess

pytestmark = pytest.mark.slow

GRID = 4
CHANNELS = len(demo_data.COLORS) + len(demo_data.SHAPES) + 1  # the last one marks background


def _scene_grids(scenes: dict[int, list[dict]], image_ids: list[int], seed: int) -> np.ndarray:
    """(M, 4, 4, C): each cell the one-hot colour and shape of the object covering its centre, or background,
    plus noise (the models scale every cell to unit length, so an empty cell must say what it is)."""
    colours, shapes = list(demo_data.COLORS), list(demo_data.SHAPES)
    xs, ys = cell_centres(GRID, GRID)
    rng = np.random.default_rng(seed)
    grids = rng.normal(0.0, 0.1, size=(len(image_ids), GRID, GRID, CHANNELS)).astype(np.float32)
    grids[..., -1] += 1.0
    for row, image_id in enumerate(image_ids):
        for obj in scenes[image_id]:
            x0, y0, x1, y1 = obj["box"]
            for i, y in enumerate(ys):
                for j, x in enumerate(xs):
                    if x0 <= x <= x1 and y0 <= y <= y1:
                        grids[row, i, j, -1] -= 1.0
                        grids[row, i, j, colours.index(obj["color"])] += 1.0
                        grids[row, i, j, len(colours) + shapes.index(obj["shape"])] += 1.0
    return grids


@pytest.fixture(scope="module")
def demo_with_grids(tmp_path_factory, vectors_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("pointing")
    raw, out = root / "raw", root / "processed"
    demo_data.write_demo_dataset(raw, train_images=300, val_images=100, seed=0)
    words = set()
    for split in demo_data.SPLITS:
        from vqa.storage import read_json

        questions = read_json(raw / f"v2_OpenEnded_mscoco_{split}_questions.json", "demo questions")["questions"]
        for tokens in tokenize(blank_tokenizer("en"), [q["question"] for q in questions]):
            words.update(tokens)
    preprocess(raw, out, vectors=str(vectors_factory(words)), weights=str(tiny_backbone))
    scenes = demo_data.read_scenes(raw)
    for seed, split in enumerate(demo_data.SPLITS):
        arrays = split_files.read_questions(out / split)
        image_ids = list(dict.fromkeys(int(i) for i in arrays.image_ids))
        grid_features.write_grids(grid_features.grid_path(out / split), image_ids,
                                  _scene_grids(scenes[split], image_ids, seed), TINY_BACKBONE, "scene labels")
    return raw, out


@pytest.fixture(scope="module")
def attention_run(demo_with_grids, tmp_path_factory):
    _, out = demo_with_grids
    run = tmp_path_factory.mktemp("pointing_run") / "run"
    config = Config(
        model=ModelConfig(name="multi-glimpse", lstm_units=32, lstm_layers=1, hidden_units=64, fusion_units=64,
                          dropout=0.0, glimpses=1),
        train=TrainConfig(epochs=12, batch_size=32, learning_rate=0.01, early_stopping_patience=0, seed=0))
    return run, vqa_train.train(out, run, config, log=lambda line: None)


def test_multi_glimpse_attends_inside_the_named_objects_box(demo_with_grids, attention_run):
    raw, out = demo_with_grids
    run, metrics = attention_run
    pointing = attention_pointing(run, out, raw)
    assert pointing.grid == (GRID, GRID)
    assert pointing.questions >= 30  # every val "What color is the ...?" question with an image
    assert pointing.rate >= 0.8, (pointing, metrics)


def test_the_same_run_misses_on_grids_turned_upside_down(demo_with_grids, attention_run, tmp_path):
    """The boxes are what is checked: with each val grid rotated by 180 degrees the model attends where the
    object's cells went, outside the generator's box."""
    import shutil

    raw, out = demo_with_grids
    run, _ = attention_run
    rotated = tmp_path / "processed"
    shutil.copytree(out, rotated)
    path = grid_features.grid_path(rotated / "val2014")
    with grid_features.GridReader(path) as reader:
        info, grids = reader.info, reader.read(np.arange(len(reader)))
    path.unlink()
    grid_features.write_grids(path, info.image_ids, grids[:, ::-1, ::-1], info.spec, info.layer)
    assert attention_pointing(run, rotated, raw).rate < 0.5


def test_a_run_on_detector_regions_is_refused_in_one_sentence(demo_with_grids, attention_run, tmp_path):
    """Boxes of a detector are no grid of cells to point into: said before any model loads."""
    import json
    import shutil

    from vqa.errors import VQAError

    raw, out = demo_with_grids
    run, _ = attention_run
    copy = tmp_path / "regions_run"
    shutil.copytree(run, copy)
    described = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**described, "features": "regions", "grid_shape": None}))
    with pytest.raises(VQAError, match="reads regions image features, not a grid its attention could point into"):
        attention_pointing(copy, out, raw)


def test_cell_centres_are_in_image_pixels():
    xs, ys = cell_centres(4, 2, image_size=64)
    assert list(xs) == [16.0, 48.0]  # 2 columns: the demo CNN's grid has one cell per quadrant
    assert list(ys) == [8.0, 24.0, 40.0, 56.0]
