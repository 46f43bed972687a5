"""Robustness of inputs (issue #11): no traceback left, and bad items inside good data skipped and named.

Every case drives the CLI as a user would (``vqa.cli.main``) and expects exit 1 with one
sentence that names the file at fault, or, for one bad item inside good data, a skipped,
counted and named item. One tiny run is trained for the module (stand-in backbone and word
vectors, as in the other tests); tests that damage files damage copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import THREE_QUESTIONS, three_question_items, write_official_split
from vqa import manifest as manifest_lib
from vqa.cli import main
from vqa.layout import annotations_filename, questions_filename

pytestmark = pytest.mark.slow  # one tiny training for the module: ~15 s on 2 cores

NESTED = "[" * 200000
WORDS = sorted({word for question, _, _ in THREE_QUESTIONS for word in question.split()})


def _fails(args: list[str], capsys, *named) -> str:
    """Run the CLI, check exit 1 with one "error: " line and no traceback; return that line."""
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for name in named:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels: all Pillow needs to see a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def vectors(vectors_factory) -> str:
    return str(vectors_factory(WORDS, name="inputs_vectors"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_backbone, vectors):
    """Official-layout train2014 (images 1-4) and val2014 (5-7), preprocessed, and a run trained 1 epoch."""
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from helpers import preprocess
    from vqa.train import train

    root = tmp_path_factory.mktemp("inputs")
    raw, out, run = root / "raw", root / "processed", root / "run"
    write_official_split(raw, "train2014", three_question_items([1, 2, 3, 4]))
    write_official_split(raw, "val2014", three_question_items([5, 6, 7]))
    preprocess(raw, out, ["train2014", "val2014"], vectors=vectors, weights=str(tiny_backbone))
    config = Config(data=DataConfig(data_dir=str(out), val_split=""),
                    model=ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8),
                    train=TrainConfig(epochs=1, batch_size=16))
    train(out, run, config, log=lambda message: None)
    return {"raw": raw, "out": out, "run": run, "image": sorted((raw / "train2014").glob("*.jpg"))[0]}


def _data_copy(pipeline, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the preprocessed folder whose val2014 record points at a copy of the annotations file."""
    out = tmp_path / "processed"
    shutil.copytree(pipeline["out"], out)
    annotations = tmp_path / annotations_filename("val2014")
    shutil.copy(pipeline["raw"] / annotations_filename("val2014"), annotations)
    manifest = manifest_lib.read_manifest(out)
    record = dataclasses.replace(manifest.splits["val2014"], annotations_file=str(annotations))
    manifest_lib.write_manifest(out, manifest.with_split("val2014", record))
    return out, annotations


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["results", "questions", "annotations"])
def test_deeply_nested_json_to_score_is_one_sentence(tmp_path, capsys, which):
    raw = tmp_path / "raw"
    write_official_split(raw, "val2014", three_question_items([5]), images=False)
    files = {"questions": raw / questions_filename("val2014"), "annotations": raw / annotations_filename("val2014"),
             "results": tmp_path / "results.json"}
    files["results"].write_text(json.dumps([{"question_id": 5000 + k, "answer": "yes"} for k in range(3)]))
    files[which].write_text(NESTED)
    line = _fails(["score", *(arg for key in ("questions", "annotations", "results")
                              for arg in (f"--{key}", files[key]))], capsys, files[which])
    assert "nested too deeply" in line


@pytest.mark.parametrize("which", ["questions", "annotations"])
def test_deeply_nested_official_file_to_preprocess_is_one_sentence(tmp_path, capsys, vectors, tiny_backbone, which):
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", three_question_items([1]))
    path = raw / (questions_filename if which == "questions" else annotations_filename)("train2014")
    path.write_text(NESTED)
    line = _fails(["preprocess", "--data-dir", raw, "--out", tmp_path / "out", "--splits", "train2014",
                   "--vectors", vectors, "--weights", tiny_backbone], capsys, path)
    assert "nested too deeply" in line


def test_deeply_nested_line_of_a_questions_file_is_one_sentence(pipeline, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"image": str(pipeline["image"]), "question": "is there a cat ?"}) + "\n"
                         + NESTED + "\n")
    line = _fails(["predict", "--run", pipeline["run"], "--questions-file", questions], capsys,
                  f"{questions} line 2")
    assert "nested too deeply" in line


# --- images and checkpoints ------------------------------------------------------------------------


def test_a_decompression_bomb_given_to_predict_is_one_sentence(pipeline, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))  # 900 Mpixel: beyond Pillow's decompression-bomb limit
    line = _fails(["predict", "--run", pipeline["run"], "--image", bomb, "--question", "is there a cat ?"],
                  capsys, bomb)
    assert line.startswith(f"error: --image: image {bomb} cannot be read (too many pixels (")

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"image": str(image), "question": "is there a cat ?"}) + "\n"
                                 for image in (pipeline["image"], bomb)))
    line = _fails(["predict", "--run", pipeline["run"], "--questions-file", questions], capsys, bomb)
    assert line.startswith(f"error: {questions} line 2: image {bomb} cannot be read (too many pixels (")


def test_resuming_from_a_checkpoint_keras_cannot_load_names_it_and_restart(pipeline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    checkpoint = run / "checkpoints" / "last.keras"
    with zipfile.ZipFile(checkpoint) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    assert "vqa_state.json" in entries
    entries["model.weights.h5"] = entries["model.weights.h5"][: len(entries["model.weights.h5"]) // 2]
    with zipfile.ZipFile(checkpoint, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    line = _fails(["train", "--data", pipeline["out"], "--out", run, "--config", run / "config.json",
                   "--epochs", "2"], capsys, checkpoint)
    assert "--restart" in line


# --- corrupt preprocessed files ----------------------------------------------------------------------


def test_a_truncated_question_file_stops_evaluate_in_one_sentence(pipeline, tmp_path, capsys):
    out, _ = _data_copy(pipeline, tmp_path)
    path = out / "val2014" / "questions.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = _fails(["evaluate", "--run", pipeline["run"], "--data", out, "--split", "val2014",
                   "--results", tmp_path / "results.json"], capsys, path)
    assert "vqa preprocess" in line


def test_an_answer_vocabulary_without_answers_stops_train_in_one_sentence(pipeline, tmp_path, capsys):
    out, _ = _data_copy(pipeline, tmp_path)
    (out / "answers.json").write_text(json.dumps({"x": 1}))
    _fails(["train", "--data", out, "--out", tmp_path / "run", "--epochs", "1"], capsys, out / "answers.json")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_preprocessing_record_holding_a_list_is_one_sentence(pipeline, tmp_path, capsys, command):
    out = tmp_path / "processed"
    out.mkdir()
    (out / "preprocess.json").write_text("[1, 2]")
    args = (["train", "--data", out, "--out", tmp_path / "run"] if command == "train"
            else ["evaluate", "--run", pipeline["run"], "--data", out, "--split", "val2014"])
    _fails(args, capsys, out / "preprocess.json")


@pytest.mark.parametrize("command", ["train", "preprocess"])
def test_a_latin1_config_file_is_one_sentence(tmp_path, capsys, command):
    config = tmp_path / "config.json"
    section = "train" if command == "train" else "preprocess"
    config.write_bytes(json.dumps({section: {}, "_note": "caf\xe9"}, ensure_ascii=False).encode("latin-1"))
    args = (["train", "--data", tmp_path, "--out", tmp_path / "run", "--config", config] if command == "train"
            else ["preprocess", "--data-dir", tmp_path, "--out", tmp_path / "out", "--config", config])
    line = _fails(args, capsys, config)
    assert "UTF-8" in line and "save it" in line


# --- bad items inside good data -----------------------------------------------------------------------

BIG_IMAGE_ID = 2 ** 70
BIG_QUESTION_ID = 2 ** 64


@pytest.fixture(scope="module")
def skipped(pipeline, tmp_path_factory, tiny_backbone, vectors):
    """The pipeline's raw data with bad items added to both splits, preprocessed through the CLI.

    train2014 gains a question about image 2**70 and one with question id 2**64 (each with an annotation);
    val2014's annotations of 5000, 5001, 6000, 6001 and 6002 are broken in five ways.
    """
    root = tmp_path_factory.mktemp("skipped")
    raw, out = root / "raw", root / "processed"
    shutil.copytree(pipeline["raw"], raw)

    def add_bad_questions(data):
        question = data["questions"][0]
        data["questions"] += [dict(question, image_id=BIG_IMAGE_ID, question_id=4999),
                              dict(question, question_id=BIG_QUESTION_ID)]

    def add_their_annotations(data):
        annotation = data["annotations"][0]
        data["annotations"] += [dict(annotation, question_id=4999), dict(annotation, question_id=BIG_QUESTION_ID)]

    _edit_json(raw / questions_filename("train2014"), add_bad_questions)
    _edit_json(raw / annotations_filename("train2014"), add_their_annotations)

    def break_annotations(data):
        by_id = {annotation["question_id"]: annotation for annotation in data["annotations"]}
        by_id[5000]["answers"] = []
        by_id[5001]["answers"] = by_id[5001]["answers"][:9]
        by_id[6000]["answers"][3] = "yes"
        by_id[6001]["answer_type"] = None
        by_id[6002]["question_type"] = None

    _edit_json(raw / annotations_filename("val2014"), break_annotations)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["preprocess", "--data-dir", str(raw), "--out", str(out), "--splits", "train2014,val2014",
                     "--vectors", vectors, "--weights", str(tiny_backbone)])
    return {"raw": raw, "out": out, "code": code, "err": err.getvalue()}


def test_bad_items_are_skipped_counted_and_named_at_preprocessing(skipped):
    assert skipped["code"] == 0, skipped["err"]
    lines = skipped["err"].splitlines()
    train = next(line for line in lines if line.startswith("train2014: 2 bad questions/annotations skipped ("))
    assert f"question 4999: image_id {BIG_IMAGE_ID}" in train
    assert f"question {BIG_QUESTION_ID}: question_id {BIG_QUESTION_ID}" in train
    val = next(line for line in lines if line.startswith("val2014: 5 bad questions/annotations skipped ("))
    for question_id, what in ((5000, "answers"), (5001, "answers"), (6000, "answers"), (6001, "answer_type"),
                              (6002, "question_type")):
        assert f"question {question_id}: {what}" in val, val
    assert "no question" not in skipped["err"]  # the annotations of skipped questions are not orphans

    manifest = manifest_lib.read_manifest(skipped["out"])
    assert manifest.splits["train2014"].num_questions == 12
    assert manifest.splits["train2014"].skipped_questions == 2
    assert manifest.splits["val2014"].num_questions == 4
    assert manifest.splits["val2014"].skipped_questions == 5
    assert len(manifest.splits["val2014"].skipped_examples) == 5
    assert manifest.splits["val2014"].skipped_examples[0].startswith("question 5000: answers")

    from vqa.split_files import read_questions, read_text_columns

    for split, kept in (("train2014", [k + 1000 * i for i in (1, 2, 3, 4) for k in range(3)]),
                        ("val2014", [5002, 7000, 7001, 7002])):
        arrays = read_questions(skipped["out"] / split)
        assert arrays.question_ids.tolist() == kept
        columns = read_text_columns(skipped["out"] / split)
        assert columns.question_ids == [str(i) for i in kept]
        assert len(columns.answer_types) == len(kept) and all(columns.answer_types)


def test_evaluate_scores_exactly_what_preprocessing_kept(pipeline, skipped, tmp_path, capsys):
    assert skipped["code"] == 0, skipped["err"]
    annotations = skipped["raw"] / annotations_filename("val2014")
    results = tmp_path / "results.json"
    code = main(["evaluate", "--run", str(pipeline["run"]), "--data", str(skipped["out"]), "--split", "val2014",
                 "--results", str(results)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"scoring the 4 questions preprocessing kept of the 9 in {annotations}" in captured.err
    assert "--limit" not in captured.err
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert metrics["num_questions"] == 4
    assert sorted(r["question_id"] for r in json.loads(results.read_text())) == [5002, 7000, 7001, 7002]


@pytest.mark.parametrize("edit", ["removed", "malformed"])
def test_annotations_edited_after_preprocessing_name_the_file(pipeline, tmp_path, capsys, edit):
    out, annotations = _data_copy(pipeline, tmp_path)

    def change(data):
        if edit == "removed":
            data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 6001]
        else:
            next(a for a in data["annotations"] if a["question_id"] == 6001)["answer_type"] = None

    _edit_json(annotations, change)
    line = _fails(["evaluate", "--run", pipeline["run"], "--data", out, "--split", "val2014",
                   "--results", tmp_path / "results.json"], capsys, annotations, "6001")
    assert "preprocess" in line and "again" in line
    assert not (tmp_path / "results.json").exists()  # said before any work is done


def test_the_report_takes_annotations_without_types(tmp_path):
    from helpers import ANSWERS, write_tiny_out
    from vqa import metric
    from vqa.report import write_report
    from vqa.split_files import read_questions

    out = write_tiny_out(tmp_path / "out")
    question_ids = read_questions(out / "val2014").question_ids
    annotations = [{"question_id": int(qid), "answers": [{"answer": "red"}] * 10,
                    "answer_type": None if n % 2 else "other", "question_type": None if n % 3 else "what color"}
                   for n, qid in enumerate(question_ids)]
    results = [{"question_id": int(qid), "answer": "red"} for qid in question_ids]
    scored = metric.score(annotations, results)
    scores = np.random.default_rng(0).random((len(question_ids), len(ANSWERS))).astype(np.float32)
    path = write_report(tmp_path / "report.html", run_dir=tmp_path / "run", data_dir=out, split="val2014",
                        scores=scores, question_ids=question_ids, answers=ANSWERS, metrics=scored.to_json(),
                        per_question=scored.per_question, annotations=annotations)
    assert "Accuracy per answer type" in path.read_text()
