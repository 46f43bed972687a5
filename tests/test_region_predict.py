"""Runs on detector regions answering a user's photo: `vqa predict --regions`, the serve API, boxes drawn, the report.

One run is built for the module: the demo's scenes and photos, their stand-in region features as
peteanderson80 TSVs (``vqa.demo.label_regions``, not a detector), preprocessed with ``--regions``
alone and a tiny multi-glimpse model (2 glimpses) trained on the boxes for two epochs. Expected
scores come from ``vqa evaluate``'s own path over the stored region file, expected maps from
``vqa.attention.attention_model``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from vqa.cli import main
from vqa.demo import data as demo_data
from vqa.demo.label_regions import write_label_regions

pytestmark = pytest.mark.slow  # one preprocess and one two-epoch training for the module
TINY = ["--set", "model.lstm_units=8", "--set", "model.lstm_layers=1", "--set", "model.hidden_units=16",
        "--set", "model.fusion_units=16", "--set", "train.min_batches=0", "--set", "train.batch_size=32"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_factory):
    from vqa import text
    from vqa.layout import image_path

    root = tmp_path_factory.mktemp("region_predict")
    raw, out, run = root / "raw", root / "out", root / "mg"
    demo_data.write_demo_dataset(raw, train_images=24, val_images=8, seed=5)
    tsvs = write_label_regions(raw, root / "regions", dim=12)
    questions = [q["question"] for split in demo_data.SPLITS
                 for q in json.loads((raw / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]]
    words = {t for tokens in text.tokenize(text.blank_tokenizer("en"), questions) for t in tokens}
    assert main(["preprocess", "--data-dir", str(raw), "--out", str(out), "--vectors",
                 str(vectors_factory(words, "region_vectors")), "--regions", str(root / "regions")]) == 0
    assert main(["train", "--data", str(out), "--out", str(run), "--model", "multi-glimpse", "--epochs", "2",
                 *TINY]) == 0
    lines = {int(line.split("\t", 1)[0]): line for line in tsvs["val2014"].read_text().splitlines()}
    photos = {image_id: image_path(raw, "val2014", image_id) for image_id in lines}
    return {"root": root, "raw": raw, "out": out, "run": run, "tsv": tsvs["val2014"], "lines": lines,
            "photos": photos}


def _row(line: str):
    """One TSV line's (width, height, boxes (K, 4), features (K, D)), decoded."""
    fields = next(csv.reader([line], dialect="excel-tab"))
    boxes = np.frombuffer(base64.b64decode(fields[4]), np.float32).reshape(-1, 4)
    features = np.frombuffer(base64.b64decode(fields[5]), np.float32).reshape(len(boxes), -1)
    return float(fields[1]), float(fields[2]), boxes, features


def _one_image_files(built, image_id, folder):
    """The image's regions alone, as a one-line TSV and as one MCAN .npz file (x (D, K), bbox, image sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    tsv = folder / "one.tsv"
    tsv.write_text(built["lines"][image_id] + "\n")
    width, height, boxes, features = _row(built["lines"][image_id])
    npz = folder / f"COCO_val2014_{image_id:012d}.jpg.npz"  # as MCAN names it
    np.savez(npz, x=features.T, bbox=boxes, num_bbox=len(boxes), image_w=width, image_h=height)
    return tsv, npz


def _predict_json(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args), "--json"]) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def _one_sentence(capsys, *args) -> str:
    assert main(["predict", *map(str, args)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


# --- vqa predict --regions ------------------------------------------------------------------------------------------


def test_predict_on_a_photo_and_its_regions_gives_what_evaluate_gives_on_the_stored_file(built, capsys, tmp_path):
    from vqa import split_files
    from vqa.evaluate import predict_split
    from vqa.run_folder import load_run_model

    _, stored_scores, _ = predict_split(load_run_model(built["run"]), built["out"], "val2014", features="regions")
    columns = split_files.read_text_columns(built["out"] / "val2014")
    answers = json.loads((built["run"] / "answers.json").read_text())["answers"]
    rows = [next(row for row, image in enumerate(columns.image_ids) if int(image) == image_id)
            for image_id in list(built["lines"])[:1]]
    for row in rows:
        image_id, question = int(columns.image_ids[row]), columns.questions[row]
        tsv, npz = _one_image_files(built, image_id, tmp_path / str(image_id))
        renamed = tmp_path / str(image_id) / "photo.jpg"  # a name without the id: the file's only image is it
        shutil.copy(built["photos"][image_id], renamed)
        ask = ["--question", question, "--top-k", len(answers)]
        for photo, regions in ((built["photos"][image_id], built["tsv"]),  # several images: the id in the name
                               (renamed, tsv), (renamed, npz)):
            [result] = _predict_json(capsys, "--run", built["run"], "--image", photo, "--regions", regions, *ask)
            scores = {item["answer"]: item["score"] for item in result["answers"]}
            assert result["region_id"] == image_id
            assert [scores[a] for a in answers] == pytest.approx(stored_scores[row].tolist(), abs=2e-3)
            best = np.sort(stored_scores[row])[-2:]
            if best[1] - best[0] > 4e-3:  # float16 storage could swap near-equal answers
                assert result["answers"][0]["answer"] == answers[int(stored_scores[row].argmax())]


def test_json_boxes_and_weights_are_the_attention_models_maps_in_the_photos_pixels(built, capsys, tmp_path):
    import keras

    from vqa import text as text_lib
    from vqa.attention import attention_model
    from vqa.names import QUESTION_IDS
    from vqa.photo_regions import PhotoRegions, model_inputs
    from vqa.run_folder import load_run_model

    image_id = list(built["lines"])[3]
    photo = tmp_path / "big.png"  # twice the size the file records: the boxes scale with it
    with Image.open(built["photos"][image_id]) as original:
        original.resize((original.width * 2, original.height * 3)).save(photo)
    question = "what color is the circle ?"
    [result] = _predict_json(capsys, "--run", built["run"], "--image", photo, "--question", question,
                             "--regions", built["tsv"], "--region-id", image_id)

    width, height, boxes, features = _row(built["lines"][image_id])
    words = text_lib.read_vocabulary(built["run"])
    tokens = text_lib.tokenize(text_lib.read_tokenizer(built["run"], "en"), [question])
    ids, _ = text_lib.token_ids(tokens, {word: i for i, word in enumerate(words)},
                                json.loads((built["run"] / "run.json").read_text())["max_question_length"])
    inputs = model_inputs([PhotoRegions(image_id, features, boxes, (width, height))], "regions")
    expected = keras.ops.convert_to_numpy(attention_model(load_run_model(built["run"]))(
        {QUESTION_IDS: ids, **inputs}))[0]
    assert result["region_id"] == image_id and len(result["attention"]) == expected.shape[0] == 2
    for weights, entries in zip(expected, result["attention"]):
        assert len(entries) == min(10, len(boxes))
        assert [entry["weight"] for entry in entries] == sorted((entry["weight"] for entry in entries), reverse=True)
        for entry in entries:
            assert entry["weight"] == pytest.approx(weights[entry["index"]], abs=1e-4)
            assert entry["box"] == pytest.approx((boxes[entry["index"]] * [2, 3, 2, 3]).tolist(), abs=0.051)
        assert entries[0]["index"] == int(weights.argmax())


def _luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def test_the_picture_has_its_brightest_box_where_the_top_weighted_box_is(built, capsys, tmp_path):
    from vqa.box_drawing import EDGE
    from vqa.heatmap import GAP, LABEL_HEIGHT

    checked = 0
    for image_id in list(built["lines"])[:2]:
        out_png = tmp_path / f"boxes-{image_id}.png"
        [result] = _predict_json(capsys, "--run", built["run"], "--image", built["photos"][image_id], "--question",
                                 "what color is the square ?", "--regions", built["tsv"], "--attention", out_png)
        width, height, boxes, _ = _row(built["lines"][image_id])
        with Image.open(out_png) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        side = 256  # the 64-px photo enlarged to ATTENTION_PICTURE's smallest side
        assert pixels.shape == (side + 2 * LABEL_HEIGHT, 2 * side + GAP, 3)
        for glimpse, entries in enumerate(result["attention"]):
            weights = sorted((entry["weight"] for entry in entries), reverse=True)
            if len(weights) > 1 and weights[1] > 0.995 * weights[0]:
                continue  # a near tie: both boxes are drawn (almost) the brightest colour
            panel = pixels[2 * LABEL_HEIGHT:, glimpse * (side + GAP):glimpse * (side + GAP) + side]
            brightness = []
            for x1, y1, x2, y2 in np.rint(boxes * side / width).astype(int):
                frame = np.ones((y2 - y1, x2 - x1), bool)
                frame[EDGE:-EDGE, EDGE:-EDGE] = False
                brightness.append(np.median(_luminance(panel[y1:y2, x1:x2][frame])))
            assert int(np.argmax(brightness)) == entries[0]["index"], (brightness, entries)
            checked += 1
    assert checked >= 2


def test_a_questions_file_reads_each_lines_photo_from_the_file_by_id(built, capsys, tmp_path):
    first, second = list(built["lines"])[:2]
    renamed = tmp_path / "holiday.jpg"
    shutil.copy(built["photos"][second], renamed)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"image": str(built["photos"][first]), "question": "how many circles ?"}) + "\n"
                         + json.dumps({"image": str(renamed), "question": "how many circles ?",
                                       "region_id": second}) + "\n")
    results = _predict_json(capsys, "--run", built["run"], "--questions-file", questions, "--regions", built["tsv"])
    assert [result["region_id"] for result in results] == [first, second]
    [alone] = _predict_json(capsys, "--run", built["run"], "--image", renamed, "--question", "how many circles ?",
                            "--regions", built["tsv"], "--region-id", second)
    for got, expected in zip(results[1]["answers"], alone["answers"]):  # same regions, same scores
        assert got["answer"] == expected["answer"] and got["score"] == pytest.approx(expected["score"], abs=2e-4)

    questions.write_text(json.dumps({"image": str(renamed), "question": "how many circles ?"}) + "\n")
    assert _one_sentence(capsys, "--run", built["run"], "--questions-file", questions, "--regions", built["tsv"]) == (
        f"error: --regions {built['tsv']} holds the regions of several images and the name of holiday.jpg has no "
        f'image id to pick one by; add "region_id": N to {questions} line 1 with the photo\'s COCO image id.')


def test_every_layout_gives_the_photo_the_same_regions(built, tmp_path):
    import h5py

    from vqa.photo_regions import RegionRequest, read_photo_regions

    first, second = list(built["lines"])[:2]
    rows = {image_id: _row(built["lines"][image_id]) for image_id in (first, second)}

    def spatial(width, height, boxes):
        return np.concatenate([boxes / [width, height, width, height], (boxes[:, 2:] - boxes[:, :2]) / [width, height]],
                              axis=1).astype(np.float32)

    _, npz = _one_image_files(built, second, tmp_path / "one")
    mcan = tmp_path / "mcan"  # MCAN's folder of .npz files
    mcan.mkdir()
    shutil.copy(npz, mcan / npz.name)
    lone = tmp_path / "lone.hdf5"  # hengyuan-hu's layout, one image and no id map: its only image
    with h5py.File(lone, "w") as f:
        width, height, boxes, features = rows[second]
        f["image_features"], f["image_bb"] = features[None], boxes[None]
        f["spatial_features"] = spatial(width, height, boxes)[None]
    adaptive = tmp_path / "adaptive" / "val36.hdf5"  # ban-vqa's layout, its id map beside it
    adaptive.parent.mkdir()
    with h5py.File(adaptive, "w") as f:
        f["image_features"] = np.concatenate([rows[i][3] for i in (first, second)])
        f["image_bb"] = np.concatenate([rows[i][2] for i in (first, second)])
        f["spatial_features"] = np.concatenate([spatial(*rows[i][:3]) for i in (first, second)])
        counts = [len(rows[i][2]) for i in (first, second)]
        f["pos_boxes"] = np.array([[0, counts[0]], [counts[0], sum(counts)]])
    (adaptive.parent / "val36_imgid2idx.json").write_text(json.dumps({str(first): 0, str(second): 1}))

    photo = f"COCO_val2014_{second:012d}.jpg"
    for source in (built["tsv"], npz, mcan, lone, adaptive):
        [found] = read_photo_regions(source, [RegionRequest(photo)], feature_dim=12)
        width, height, boxes, features = rows[second]
        assert found.image_id == second and found.size == (width, height)
        np.testing.assert_allclose(found.features, features, rtol=1e-6)
        np.testing.assert_allclose(found.boxes, boxes)
        np.testing.assert_allclose(found.boxes_in(2 * width, height), boxes * [2, 1, 2, 1])


def test_refusals_are_one_sentence_before_any_model_loads(built, capsys, tmp_path):
    run, tsv = built["run"], built["tsv"]
    image_id = list(built["lines"])[0]
    photo = built["photos"][image_id]
    ask = ["--question", "how many circles ?"]

    error = _one_sentence(capsys, "--run", run, "--image", photo, *ask)
    assert error.startswith(f"error: {run} reads region features (bottom-up attention boxes), which come from an "
                            "object detector this project does not run") and "--regions FILE" in error

    plain = tmp_path / "photo.jpg"
    shutil.copy(photo, plain)
    assert _one_sentence(capsys, "--run", run, "--image", plain, *ask, "--regions", tsv) == (
        f"error: --regions {tsv} holds the regions of several images and the name of photo.jpg has no image id to "
        "pick one by; pass --region-id N with the photo's COCO image id.")
    assert _one_sentence(capsys, "--run", run, "--image", plain, *ask, "--regions", tsv, "--region-id", 777) == (
        f"error: --regions {tsv} has no usable regions for image 777 (not in {tsv.name}); pass --region-id N with "
        "an image it holds, or pass the region file of this photo.")
    elsewhere = tmp_path / "COCO_val2014_000000000777.jpg"
    shutil.copy(photo, elsewhere)
    assert "has no usable regions for image 777 (the id in the name COCO_val2014_000000000777.jpg: not in" in (
        _one_sentence(capsys, "--run", run, "--image", elsewhere, *ask, "--regions", tsv))

    fields = built["lines"][image_id].split("\t")
    broken = tmp_path / "broken.tsv"
    broken.write_text("\t".join([*fields[:4], fields[4][:-8], fields[5]]) + "\n")  # boxes cut short
    error = _one_sentence(capsys, "--run", run, "--image", plain, *ask, "--regions", broken)
    assert error.startswith(f"error: --regions {broken} has no usable regions for image {image_id} (line 1 of "
                            "broken.tsv ")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not HDF5 at all" * 50)
    assert _one_sentence(capsys, "--run", run, "--image", plain, *ask, "--regions", garbage).startswith(
        f"error: region features {garbage} is in none of the known layouts; pass a .tsv file")
    assert _one_sentence(capsys, "--run", run, "--image", plain, *ask, "--region-id", 3) == (
        "error: --region-id 3 names an image of a region file; pass the file with --regions FILE.")

    for features, reads in (("grid", "grid image features"), ("grid-regions", "grid-regions image features"),
                            ("fc7", "fc7 image features")):
        other = tmp_path / f"run-{features}"
        shutil.copytree(run, other)
        described = json.loads((other / "run.json").read_text())
        (other / "run.json").write_text(json.dumps({**described, "features": features, "grid_shape": [2, 2, 12]}))
        (other / "model.keras").write_bytes(b"not a model")  # never read
        assert _one_sentence(capsys, "--run", other, "--image", photo, *ask, "--regions", tsv) == (
            f"error: --regions {tsv} gives detector boxes, but {other} is a multi-glimpse run on {reads}, which does "
            "not read detector regions; leave --regions out.")


def test_boxes_are_drawn_lowest_weight_first_and_the_strongest_labelled():
    from vqa import heatmap
    from vqa.box_drawing import BoxMaps, overlay, render

    grey = np.full((60, 100, 3), 128, np.uint8)
    boxes = np.array([[10, 10, 60, 50], [30, 20, 90, 55], [0, 0, 20, 15], [70, 2, 98, 12]], np.float32)
    weights = np.array([0.1, 0.6, 0.25, 0.05], np.float32)
    drawn = overlay(grey, boxes, weights)
    top_colour = heatmap.colour_map(np.float32(1.0))
    # The strongest box's outline is its colour at full opacity, on top of the box it overlaps.
    assert np.abs(drawn[54, 50].astype(int) - top_colour).max() <= 1  # bottom edge of box 1
    assert np.abs(drawn[35, 31].astype(int) - top_colour).max() <= 1  # left edge of box 1, inside box 0
    # A weaker box is fainter and darker; outside every box the photo is untouched.
    assert _luminance(drawn[49, 15]) < _luminance(drawn[54, 50])
    assert (drawn[58, 5] == 128).all()
    # The three strongest carry their weight as text on a dark patch; the weakest (0.05) none.
    assert (drawn[22:32, 33:55] < 60).all(axis=-1).any() and (drawn[4:10, 73:95] == drawn[4, 73]).all()

    picture = render(None, BoxMaps(np.stack([weights, weights[::-1]]), boxes, (200, 120)), ["glimpse 1", "glimpse 2"],
                     title="Q: a   A: b", longest=100)
    assert picture.size == (2 * 100 + heatmap.GAP, 60 + 2 * heatmap.LABEL_HEIGHT)  # a canvas of 200 x 120's shape


# --- vqa serve ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(built):
    from fastapi.testclient import TestClient

    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery

    engine = Engine(built["run"])
    with TestClient(create_app(engine, run_gallery(built["run"]))) as client:
        yield client


def test_the_api_answers_with_a_regions_upload_as_predict_does(built, served, capsys, tmp_path):
    from vqa import heatmap

    image_id = list(built["lines"])[1]
    tsv, npz = _one_image_files(built, image_id, tmp_path)
    photo = built["photos"][image_id]
    question = "what color is the triangle ?"
    [expected] = _predict_json(capsys, "--run", built["run"], "--image", photo, "--question", question,
                               "--regions", tsv)
    assert served.get("/api/health").json()["regions"] is True
    for name, regions_name, regions, fields in (
            ("photo.jpg", "one.tsv", tsv.read_bytes(), {}),  # the file's only image
            ("photo.jpg", npz.name, npz.read_bytes(), {}),  # one .npz, its image named as MCAN names it
            (photo.name, "val.tsv", built["tsv"].read_bytes(), {}),  # several images: the id in the photo's name
            ("photo.jpg", "val.tsv", built["tsv"].read_bytes(), {"region_id": str(image_id)})):
        response = served.post("/api/answer", files={"image": (name, photo.read_bytes(), "image/jpeg"),
                                                     "regions": (regions_name, regions)},
                               data={"question": question, "heatmap": "true", **fields})
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert result["answers"] == expected["answers"] and result["region_id"] == image_id
        assert result["attention"] == expected["attention"]
    [uri] = response.json()["heatmaps"]
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as picture:
        assert picture.size == (2 * 64 + heatmap.GAP, 64 + heatmap.LABEL_HEIGHT)  # two glimpses over the photo
    by_id = served.post("/api/answer", data={"image_id": str(image_id), "question": question},
                        files={"regions": ("r.tsv", built["tsv"].read_bytes())})
    assert by_id.status_code == 200 and by_id.json()["results"][0]["region_id"] == image_id


def test_the_api_refuses_a_region_run_without_regions_in_one_sentence(built, served):
    photo = built["photos"][list(built["lines"])[0]]
    cases = [({"image": ("photo.jpg", photo.read_bytes(), "image/jpeg")}, 400, 'attach the photo\'s regions in the '
              '"regions" field'),
             ({"image": ("photo.jpg", photo.read_bytes(), "image/jpeg"), "regions": ("r", b"1\tno\tregions\n")}, 422,
              "The regions upload has no usable regions for image 1"),
             ({"image": ("photo.jpg", photo.read_bytes(), "image/jpeg"), "regions": ("r.npz", b"")}, 422,
              "The regions upload is empty"),
             ({"image": ("photo.jpg", photo.read_bytes(), "image/jpeg"), "regions": ("r", built["tsv"].read_bytes())},
              422, 'send the image id in the "region_id" field')]
    for files, status, phrase in cases:
        response = served.post("/api/answer", files=files, data={"question": "how many circles ?"})
        detail = response.json()["detail"]
        assert response.status_code == status and phrase in detail, detail
        assert "\n" not in detail and "Traceback" not in detail and "/tmp" not in detail and detail.endswith(".")
        assert not re.search(r"[.?!] +[A-Z]", detail), detail



def test_the_page_in_chromium_asks_for_the_regions_file_and_shows_the_servers_boxes(built, served, tmp_path):
    """The serve page of a region run, in headless Chromium: the regions field appears, asking without a file is
    refused on the page, and with one the page shows the API's answers (which are predict's, above) and its picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serve_helpers import ServerThread, answers_of, ask_on_page, chromium_browser, page_answers, same_answers
    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery

    browser = chromium_browser(tmp_path)
    image_id = list(built["lines"])[2]
    tsv, _ = _one_image_files(built, image_id, tmp_path / "files")
    photo = built["photos"][image_id]
    question = "what color is the circle ?"
    drawn = served.post("/api/answer", files={"image": (photo.name, photo.read_bytes(), "image/jpeg"),
                                              "regions": (tsv.name, tsv.read_bytes())},
                        data={"question": question, "heatmap": "true"})
    assert drawn.status_code == 200, drawn.text
    try:
        with ServerThread(create_app(Engine(built["run"]), run_gallery(built["run"]))) as url:
            wait = WebDriverWait(browser, 60)
            browser.get(url + "/")
            wait.until(lambda b: b.find_element(By.ID, "regions-box").is_displayed())
            browser.find_element(By.ID, "file").send_keys(str(photo))
            wait.until(lambda b: b.find_element(By.ID, "preview").get_attribute("naturalWidth") not in (None, "0"))

            browser.find_element(By.ID, "question").send_keys(question)
            browser.find_element(By.ID, "ask-button").click()
            error = browser.find_element(By.ID, "error")
            wait.until(lambda b: error.is_displayed())
            assert "attach the photo's regions file" in error.text and not page_answers(browser)

            browser.find_element(By.ID, "regions").send_keys(str(tsv))
            ask_on_page(browser, wait, question, 1)
            assert same_answers(page_answers(browser), answers_of(drawn.json()["results"][0]))
            picture = browser.find_element(By.ID, "heatmap")
            wait.until(lambda b: picture.get_attribute("naturalWidth") not in (None, "0"))
            assert picture.is_displayed() and picture.get_attribute("src") == drawn.json()["heatmaps"][0]
            assert "detector box" in browser.find_element(By.ID, "heatmap-caption").text
    finally:
        browser.quit()

# --- the report -----------------------------------------------------------------------------------------------------


def test_the_report_draws_each_examples_boxes(built, capsys):
    from vqa import heatmap
    from vqa.report import GALLERY_SIZE, HEATMAP_PANEL

    missing_id = list(built["lines"])[0]
    missing = built["photos"][missing_id]
    hidden = missing.with_suffix(".hidden")
    missing.rename(hidden)  # that image's cards draw its boxes on a grey canvas of the recorded size
    try:
        assert main(["evaluate", "--run", str(built["run"]), "--split", "val2014"]) == 0
    finally:
        hidden.rename(missing)
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    page = (built["run"] / "eval" / "val2014" / "report.html").read_text(encoding="utf-8")
    cards = page.split('<div class="card ')[1:]
    assert len(cards) == min(GALLERY_SIZE, metrics["num_questions"])
    pictures = [re.findall(r'<img class="attention" src="data:image/jpeg;base64,([^"]+)"', card) for card in cards]
    assert all(len(found) == 1 for found in pictures)  # one picture of the boxes per example
    assert "glimpse 1, glimpse 2" in page and "the top 3 labelled with their weight" in page
    drawn = [Image.open(io.BytesIO(base64.b64decode(found[0]))).convert("RGB") for found in pictures]
    assert {picture.size for picture in drawn} == {(2 * HEATMAP_PANEL + heatmap.GAP,
                                                    HEATMAP_PANEL + heatmap.LABEL_HEIGHT)}

    # Without its photo, the boxes lie on a grey canvas, in place: outside them the panel is the canvas.
    on_canvas = [picture for card, picture in zip(cards, drawn) if f"image {missing_id} not available" in card]
    assert on_canvas, "the cards of the image without its file"
    width, _, boxes, _ = _row(built["lines"][missing_id])
    outside = np.ones((HEATMAP_PANEL, HEATMAP_PANEL), bool)
    for x1, y1, x2, y2 in np.rint(boxes * HEATMAP_PANEL / width).astype(int):
        outside[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] = False
    panel = np.asarray(on_canvas[0])[heatmap.LABEL_HEIGHT:, :HEATMAP_PANEL].astype(int)
    assert outside.sum() > 100 and np.median(np.abs(panel[outside] - heatmap.NO_IMAGE)) <= 3
    assert np.abs(panel[~outside] - heatmap.NO_IMAGE).max() > 40  # and the boxes are drawn on it


def test_photo_regions_are_padded_to_a_few_box_counts_so_a_server_traces_a_few_shapes():
    from vqa.names import REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
    from vqa.photo_regions import PhotoRegions, box_slots, model_inputs

    assert [box_slots(n) for n in (1, 10, 16, 17, 36, 64, 65, 100)] == [16, 16, 16, 32, 64, 64, 128, 128]
    photos = [PhotoRegions(7, np.ones((n, 4), np.float32), np.tile([0, 0, 10, 10], (n, 1)).astype(np.float32),
                           (20.0, 20.0)) for n in (3, 20)]
    inputs = model_inputs(photos, "regions")
    assert inputs[REGION_FEATURES].shape == (2, 32, 4) and inputs[REGION_MASK].sum(axis=1).tolist() == [3, 20]
    assert not inputs[REGION_FEATURES][0, 3:].any() and not inputs[REGION_GEOMETRY][1, 20:].any()
