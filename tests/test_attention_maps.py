"""Seeing attention: heatmaps over images, `vqa predict --attention` and `--json`, predict on grid runs, the report.

The runs are built once for the module: official-layout JSON and JPEGs (a coloured square on
grey, somewhere different in each image) in tmp_path, a stand-in .keras backbone whose last
4-D layer gives a 4 x 4 x 6 grid, preprocessed with ``features="both"`` (fc7 and grid files
from one forward pass), then a stacked-attention run (2 hops) on the grid, one on the grid read as
regions (``data.features=grid-regions``), and a global run on the grid's mean, each trained one epoch.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import THREE_QUESTIONS, three_question_items, write_official_split
from serve_helpers import grid_backbone
from vqa.cli import main
from vqa.errors import VQAError
from vqa.names import IMAGE_FEATURES, IMAGE_GRID, QUESTION_IDS

pytestmark = pytest.mark.slow  # one tiny preprocess and three one-epoch trainings for the module: ~40 s on 2 cores

IMAGE_SIZE = (48, 40)  # (W, H) of the test photos
GRID = (4, 4, 6)
SPLITS = {"train2014": list(range(1, 9)), "val2014": list(range(11, 21))}  # val: 30 questions, the gallery 24


def _photo(path, seed: int) -> None:
    """Grey, with a coloured square at a place that depends on ``seed``."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    pixels = np.full((height, width, 3), 110, np.uint8)
    top, left = rng.integers(0, height - 14), rng.integers(0, width - 14)
    pixels[top:top + 14, left:left + 14] = rng.integers(0, 256, 3)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vectors_factory):
    from helpers import preprocess
    from vqa import backbone as backbone_lib
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.layout import image_path
    from vqa.train import train

    root = tmp_path_factory.mktemp("attention_maps")
    raw, out = root / "raw", root / "processed"
    for split, image_ids in SPLITS.items():
        write_official_split(raw, split, three_question_items(image_ids))
        for image_id in image_ids:
            _photo(image_path(raw, split, image_id), image_id)
    weights = root / "grid_backbone.keras"
    grid_backbone(weights)
    words = {word for question, _, _ in THREE_QUESTIONS for word in question.split()}
    preprocess(raw, out, tuple(SPLITS), vectors=str(vectors_factory(words)), weights=str(weights), features="both")
    assert backbone_lib.read_backbone(out).grid_shape == GRID

    tiny = ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8)
    once = TrainConfig(epochs=1, batch_size=16)
    san = ModelConfig(**{**tiny.__dict__, "name": "san"})
    train(out, root / "san", Config(model=san, train=once), log=lambda message: None)
    train(out, root / "cells", Config(data=DataConfig(features="grid-regions"), model=san, train=once),
          log=lambda message: None)
    train(out, root / "mean", Config(data=DataConfig(features="grid-mean"), model=tiny, train=once),
          log=lambda message: None)
    photos = {split: [image_path(raw, split, i) for i in ids] for split, ids in SPLITS.items()}
    return {"root": root, "out": out, "san": root / "san", "cells": root / "cells", "mean": root / "mean",
            "photos": photos}


def _predict_json(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def _cell_of_brightest_pixel(panel: np.ndarray, rows: int, columns: int) -> tuple[int, int]:
    """The grid cell (row, column) under the panel's brightest pixel (luma)."""
    luma = panel[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    y, x = np.unravel_index(int(luma.argmax()), luma.shape)
    return int(y * rows // luma.shape[0]), int(x * columns // luma.shape[1])


def _panels(picture: np.ndarray, count: int, size: tuple[int, int], header: int) -> list[np.ndarray]:
    from vqa.heatmap import GAP

    width, height = size
    return [picture[header:header + height, n * (width + GAP):n * (width + GAP) + width] for n in range(count)]


# --- the heatmap itself ------------------------------------------------------------------------------------------


def test_each_panel_is_brightest_over_its_maps_top_cell():
    from vqa import heatmap

    rng = np.random.default_rng(0)
    width, height = 50, 30
    grey = np.full((height, width, 3), 120, np.uint8)
    for _ in range(5):
        maps = rng.random((3, 3, 5)) ** 4  # peaked: one cell clearly on top
        maps /= maps.sum(axis=(1, 2), keepdims=True)
        picture = heatmap.render(grey, maps, ["glimpse 1", "glimpse 2", "glimpse 3"], title="Q: where?")
        assert picture.size == (3 * width + 2 * heatmap.GAP, height + 2 * heatmap.LABEL_HEIGHT)
        panels = _panels(np.asarray(picture), 3, (width, height), 2 * heatmap.LABEL_HEIGHT)
        for panel, weights in zip(panels, maps):
            top = np.unravel_index(int(weights.argmax()), weights.shape)
            assert _cell_of_brightest_pixel(panel, 3, 5) == top

    # Without a title the labels are the only strip; the picture is scaled down to ``longest``.
    assert heatmap.render(grey, maps[:1]).size == (width, height + heatmap.LABEL_HEIGHT)
    assert heatmap.render(grey, maps[:2], longest=25).size == (2 * 25 + heatmap.GAP, 15 + heatmap.LABEL_HEIGHT)
    assert heatmap.render(grey, maps[:1], longest=100).size == (width, height + heatmap.LABEL_HEIGHT)
    assert heatmap.render(grey, maps[:1], longest=100, grow=True).size == (100, 60 + heatmap.LABEL_HEIGHT)


def test_upsampling_is_bilinear_between_cell_centres():
    from vqa.heatmap import upsample

    weights = np.array([[0.0, 1.0], [2.0, 3.0]])
    stretched = upsample(weights, (4, 6))
    assert stretched.shape == (4, 6)
    # Pixel centres at 0.5, 1.5, ... of 2-cell axes stretched to 4 and 6 pixels; cell centres at 1 and 3 (rows).
    rows = np.clip((np.arange(4) + 0.5) * 2 / 4 - 0.5, 0, 1)
    columns = np.clip((np.arange(6) + 0.5) * 2 / 6 - 0.5, 0, 1)
    expected = 2 * rows[:, None] + columns[None, :]  # the map is 2 * row + column, so bilinear is exact
    np.testing.assert_allclose(stretched, expected, atol=1e-6)


# --- vqa predict on grid runs -------------------------------------------------------------------------------------


def test_predict_draws_the_maps_and_prints_them_as_the_attention_model_gives_them(runs, capsys, tmp_path):
    import keras

    from vqa import backbone as backbone_lib
    from vqa import text as text_lib
    from vqa.attention import attention_model
    from vqa.heatmap import GAP, LABEL_HEIGHT, overlay
    from vqa.images import load_image
    from vqa.run_folder import load_run_model

    photo, question = runs["photos"]["val2014"][0], "what color is the car ?"
    out_png = tmp_path / "maps.png"
    assert main(["predict", "--run", str(runs["san"]), "--image", str(photo), "--question", question,
                 "--attention", str(out_png), "--json"]) == 0
    captured = capsys.readouterr()
    [answer] = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert captured.err.strip() == f"attention maps: {out_png}"
    maps = np.array(answer["attention"])
    assert maps.shape == (2, 4, 4)  # 2 hops of 4 x 4 cells
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)

    # The same maps from the run's own model, fed the backbone's grid and the question's token ids.
    words = text_lib.read_vocabulary(runs["san"])
    tokens = text_lib.tokenize(text_lib.read_tokenizer(runs["san"], "en"), [question])
    ids, _ = text_lib.token_ids(tokens, {word: i for i, word in enumerate(words)}, 25)
    backbone = backbone_lib.folder_backbone(runs["san"])
    grid = backbone.grids(load_image(photo, backbone.image_size)[None])
    expected = keras.ops.convert_to_numpy(attention_model(load_run_model(runs["san"]))(
        {QUESTION_IDS: ids, IMAGE_GRID: grid}))[0]
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)

    # The picture: the photo once per hop, enlarged to 256 px on its longest side (it is smaller), under a
    # title and the labels.
    shown = (256, round(IMAGE_SIZE[1] * 256 / IMAGE_SIZE[0]))  # (W, H)
    with Image.open(out_png) as picture:
        assert picture.format == "PNG"
        assert picture.size == (2 * shown[0] + GAP, shown[1] + 2 * LABEL_HEIGHT)
        pixels = np.asarray(picture.convert("RGB"))
    plain = load_image(photo, (shown[1], shown[0]))
    for panel, weights in zip(_panels(pixels, 2, shown, 2 * LABEL_HEIGHT), maps):
        # Each panel is the photo under its printed map (that the overlay is brightest over the map's top
        # cell is checked on its own above: a one-epoch model's maps are too flat to show it here).
        np.testing.assert_allclose(panel.astype(int), overlay(plain, weights).astype(int), atol=1)
        assert np.abs(panel.astype(int) - plain).mean() > 20  # and visibly coloured


def test_a_questions_file_gets_one_numbered_picture_per_question(runs, capsys, tmp_path):
    photos = runs["photos"]["val2014"]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"image": str(photo), "question": question}) + "\n"
                                 for photo, (question, _, _) in zip(photos, THREE_QUESTIONS)))
    answers = _predict_json(capsys, "--run", runs["san"], "--questions-file", questions, "--attention",
                            tmp_path / "maps.png")
    assert len(answers) == 3 and all(np.array(a["attention"]).shape == (2, 4, 4) for a in answers)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["maps-1.png", "maps-2.png", "maps-3.png"]
    # Each picture is of its own question's maps: the same maps as asking that question alone.
    [second] = _predict_json(capsys, "--run", runs["san"], "--image", photos[1], "--question", THREE_QUESTIONS[1][0])
    np.testing.assert_allclose(answers[1]["attention"], second["attention"], atol=1e-5)
    assert [a["answer"] for a in answers[1]["answers"]] == [a["answer"] for a in second["answers"]]


@pytest.mark.parametrize("name", ["san", "cells", "mean"])
def test_predict_on_a_photo_gives_what_evaluate_gives_on_its_stored_grid(runs, name):
    from vqa import grid_features, split_files
    from vqa.evaluate import predict_split
    from vqa.predict import Predictor
    from vqa.run_folder import load_run_model, read_run_info

    run = runs[name]
    info = read_run_info(run)
    assert info.features == {"san": "grid", "cells": "grid-regions", "mean": "grid-mean"}[name]
    assert info.grid_shape == GRID
    _, stored_scores, _ = predict_split(load_run_model(run), runs["out"], "val2014", features=info.features)
    columns = split_files.read_text_columns(runs["out"] / "val2014")
    photo_of = dict(zip(SPLITS["val2014"], runs["photos"]["val2014"]))
    rows = range(0, 30, 4)
    predictor = Predictor(run)
    answers = predictor.answer([photo_of[int(columns.image_ids[row])] for row in rows],
                               [columns.questions[row] for row in rows], top_k=len(predictor.answers))
    for row, answer in zip(rows, answers):
        scores = dict(answer.answers)
        assert [scores[a] for a in predictor.answers] == pytest.approx(stored_scores[row].tolist(), abs=2e-3)
        best = np.sort(stored_scores[row])[-2:]
        if best[1] - best[0] > 4e-3:  # the top answer is the same unless float16 storage could swap it
            assert answer.answers[0][0] == predictor.answers[int(stored_scores[row].argmax())]

    # What the backbone gives for a photo is its stored grid, up to float16 storage, whatever the run makes
    # of it (the grid, its cells as regions, or their mean); the model reads the mean of a grid-mean run.
    with grid_features.GridReader(grid_features.grid_path(runs["out"] / "val2014")) as reader:
        stored = reader.read([list(reader.image_ids).index(SPLITS["val2014"][0])]).astype(np.float32)
    computed = predictor.image_features([runs["photos"]["val2014"][0]])
    assert computed.shape == (1, *GRID)
    np.testing.assert_allclose(computed, stored, rtol=2e-3, atol=2e-3)
    if name == "mean":
        np.testing.assert_allclose(predictor.source.photo_inputs(computed)[IMAGE_FEATURES],
                                   stored.mean(axis=(1, 2)), rtol=2e-3, atol=2e-3)


def test_a_run_on_the_grid_read_as_regions_shows_its_maps_over_the_grid(runs, capsys, tmp_path):
    """Its maps are over the H * W cells (boxes in row-major order): predict and the report draw them as a grid."""
    out_png = tmp_path / "cells.png"
    [answer] = _predict_json(capsys, "--run", runs["cells"], "--image", runs["photos"]["val2014"][0], "--question",
                             "what color is the car ?", "--attention", out_png)
    maps = np.array(answer["attention"])
    assert maps.shape == (2, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert out_png.is_file()

    assert main(["evaluate", "--run", str(runs["cells"]), "--split", "val2014"]) == 0
    capsys.readouterr()
    page = (runs["cells"] / "eval" / "val2014" / "report.html").read_text(encoding="utf-8")
    assert 'class="attention"' in page and "hop 1, hop 2" in page


def test_json_of_a_global_run_has_no_attention(runs, capsys):
    [answer] = _predict_json(capsys, "--run", runs["mean"], "--image", runs["photos"]["val2014"][0],
                             "--question", "is there a cat ?")
    vocabulary = json.loads((runs["mean"] / "answers.json").read_text())["answers"]
    assert "attention" not in answer and len(answer["answers"]) == min(5, len(vocabulary))


def _one_sentence(capsys, *args) -> str:
    assert main(["predict", *map(str, args)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err.strip()


def test_attention_refusals_are_one_sentence_before_any_model_loads(runs, capsys, tmp_path):
    photo = runs["photos"]["val2014"][0]
    ask = ["--image", photo, "--question", "is there a cat ?"]
    assert _one_sentence(capsys, "--run", runs["mean"], *ask, "--attention", tmp_path / "a.png") == (
        "error: --attention needs an attention run on a grid or on regions (model san, multi-glimpse, ...); "
        f"{runs['mean']} is a deeper-lstm-norm-i run on grid-mean image features, which has no attention maps.")
    assert _one_sentence(capsys, "--run", runs["san"], *ask, "--attention", tmp_path / "a.jpg") == (
        f"error: --attention {tmp_path / 'a.jpg'} must be a .png file name (the maps are written as PNG).")
    png = tmp_path / "photo.png"
    Image.open(photo).save(png)
    assert _one_sentence(capsys, "--run", runs["san"], "--image", png, "--question", "is there a cat ?",
                         "--attention", png) == f"error: --attention {png} is also --image; choose another file name."
    assert Image.open(png).size == IMAGE_SIZE  # untouched
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"image": str(tmp_path / "maps-2.png"), "question": "is there a cat ?"}) + "\n"
                         + json.dumps({"image": str(png), "question": "is there a cat ?"}) + "\n")
    shutil.copy(png, tmp_path / "maps-2.png")
    assert _one_sentence(capsys, "--run", runs["san"], "--questions-file", questions, "--attention",
                         tmp_path / "maps.png") == (
        f"error: --attention (for {questions} line 2) {tmp_path / 'maps-2.png'} is also the image of {questions} "
        "line 1; choose another file name.")
    assert not (tmp_path / "maps-1.png").exists()


def test_grid_runs_without_a_grid_backbone_say_so(runs, capsys, tmp_path):
    from dataclasses import replace

    from vqa import backbone as backbone_lib
    from vqa.predict import Predictor

    ask = ["--image", runs["photos"]["val2014"][0], "--question", "is there a cat ?"]
    imported = tmp_path / "imported"
    shutil.copytree(runs["san"], imported)
    backbone_lib.write_backbone(imported, backbone_lib.BackboneSpec.for_import("/data/grids.h5", GRID[2]))
    assert "was trained on grid features imported from /data/grids.h5, so it has no image backbone" in (
        _one_sentence(capsys, "--run", imported, *ask))

    no_grid = tmp_path / "no_grid"
    shutil.copytree(runs["san"], no_grid)
    spec = backbone_lib.read_backbone(no_grid)
    backbone_lib.write_backbone(no_grid, replace(spec, grid_layer="", grid_shape=None),
                                keras_source=no_grid / backbone_lib.MODEL_FILENAME)
    error = _one_sentence(capsys, "--run", no_grid, *ask)
    assert error.startswith(f"error: {no_grid} reads grid image features, but its image backbone (keras ")
    assert "has no grid output (its grids were imported or made elsewhere)" in error
    with pytest.raises(VQAError, match="has no grid output"):
        Predictor(no_grid).answer([runs["photos"]["val2014"][0]], ["is there a cat ?"])


def test_a_run_on_detector_regions_refuses_predict_in_one_sentence(runs, capsys, tmp_path):
    """No detector runs here, so without --regions a photo cannot become the boxes such a run reads: said before
    any model loads (with --regions: tests/test_region_predict.py)."""
    detector = tmp_path / "detector"
    shutil.copytree(runs["cells"], detector)
    described = json.loads((detector / "run.json").read_text())
    (detector / "run.json").write_text(json.dumps({**described, "features": "regions", "grid_shape": None}))
    (detector / "model.keras").write_bytes(b"not a model")  # never read
    error = _one_sentence(capsys, "--run", detector, "--image", runs["photos"]["val2014"][0], "--question",
                          "is there a cat ?")
    assert error.startswith(f"error: {detector} reads region features (bottom-up attention boxes), which come from "
                            "an object detector this project does not run")
    assert "pass the photo's regions with --regions FILE" in error and "--set data.features=grid-regions" in error


# --- the report -----------------------------------------------------------------------------------------------------


def test_the_report_of_an_attention_run_shows_a_heatmap_beside_each_example(runs, capsys):
    from vqa.heatmap import GAP, LABEL_HEIGHT
    from vqa.report import GALLERY_SIZE, HEATMAP_PANEL

    assert main(["evaluate", "--run", str(runs["san"]), "--split", "val2014"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    page = (runs["san"] / "eval" / "val2014" / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "url(" not in page and "<script" not in page
    cards = page.split('<div class="card ')[1:]
    assert len(cards) == GALLERY_SIZE < metrics["num_questions"] == 30
    heatmaps = [re.findall(r'<img class="attention" src="(data:image/jpeg;base64,[^"]+)"', card) for card in cards]
    assert all(len(found) == 1 for found in heatmaps)
    assert all(re.search(r'<div class="image"><img src="data:image/jpeg;base64,', card) for card in cards)
    # Each heatmap is a small JPEG of the two hop panels side by side under their labels, the 48 x 40 photo
    # scaled to HEATMAP_PANEL px wide.
    with Image.open(io.BytesIO(base64.b64decode(heatmaps[0][0].split(",", 1)[1]))) as first:
        panel_height = round(IMAGE_SIZE[1] * HEATMAP_PANEL / IMAGE_SIZE[0])
        assert first.format == "JPEG" and first.size == (2 * HEATMAP_PANEL + GAP, panel_height + LABEL_HEIGHT)
    assert "hop 1, hop 2" in page
    assert len(page.encode()) < 600_000

    assert main(["evaluate", "--run", str(runs["mean"]), "--split", "val2014"]) == 0
    capsys.readouterr()
    plain = (runs["mean"] / "eval" / "val2014" / "report.html").read_text(encoding="utf-8")
    assert plain.count('<div class="card ') == GALLERY_SIZE and 'class="attention"' not in plain
