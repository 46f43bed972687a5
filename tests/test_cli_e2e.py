"""The CLI end to end on a tiny generated dataset: demo-data -> preprocess -> train -> evaluate -> predict.

The stand-ins are named as such: an untrained 16-d CNN backbone saved as a .keras file
(passed through --weights like a VGG-16 weights file) and a spaCy pipeline with
pseudo-random 300-d vectors (passed through --vectors like en_core_web_lg).
"""

import json
import subprocess
import sys

import h5py
import pytest

from vqa.cli import main
from vqa.storage import read_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs the whole CLI chain once; tests below check what each step left behind."""
    from vqa import text
    from vqa import vectors as vectors_lib
    from vqa.demo import backbone as demo_backbone
    from vqa.demo import data as demo_data

    root = tmp_path_factory.mktemp("e2e")
    raw, out, run = root / "raw", root / "processed", root / "runs" / "tiny"
    assert main(["demo-data", str(raw), "--train-images", "12", "--val-images", "6", "--seed", "3"]) == 0

    backbone = root / "backbone.keras"  # stand-in backbone: untrained, 16-d
    demo_backbone.build_feature_extractor(demo_data.IMAGE_SIZE, feature_dim=16).save(backbone)
    questions = []
    for split in ("train2014", "val2014"):
        data = json.loads((raw / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
        questions += [q["question"] for q in data["questions"]]
    words = sorted({t for tokens in text.tokenize(text.blank_tokenizer("en"), questions) for t in tokens})
    vectors = vectors_lib.make_vectors_pipeline(words[:-3], root / "vectors")  # leave 3 words without a vector

    assert main(["preprocess", "--data-dir", str(raw), "--out", str(out), "--vectors", str(vectors),
                 "--weights", str(backbone), "--batch-size", "8"]) == 0
    assert main(["train", "--data", str(out), "--out", str(run), "--epochs", "2",
                 "--set", "model.lstm_units=8", "--set", "model.hidden_units=16",
                 "--set", "model.fusion_units=16", "--set", "train.batch_size=16"]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(out), "--split", "val2014"]) == 0
    return {"root": root, "raw": raw, "out": out, "run": run, "vectors": vectors, "backbone": backbone}


def test_preprocess_writes_text_files_and_arrays_in_question_order(pipeline):
    raw, out = pipeline["raw"], pipeline["out"]
    questions = json.loads((raw / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    assert read_lines(out / "val2014" / "questions.txt") == [q["question"] for q in questions]
    assert read_lines(out / "val2014" / "question_ids.txt") == [str(q["question_id"]) for q in questions]
    with h5py.File(out / "val2014" / "questions.h5") as f:
        assert list(f["question_ids"][...]) == [q["question_id"] for q in questions]
        assert f["token_ids"].shape == (len(questions), 25)
        assert (f["image_index"][...] >= 0).all()
    with h5py.File(out / "val2014" / "image_features.h5") as f:
        assert f["features"].shape == (6, 16)
    manifest = json.loads((out / "preprocess.json").read_text())
    assert manifest["oov_words"] == 3
    assert manifest["splits"]["train2014"]["num_images"] == 12


def test_train_writes_a_complete_run_directory(pipeline):
    run = pipeline["run"]
    for name in ("model.keras", "config.json", "run.json", "answers.json", "vocab.json", "backbone.json",
                 "backbone.keras", "history.csv", "metrics.json", "model_summary.txt"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "deeper-lstm-norm-i" and config["model"]["lstm_units"] == 8
    assert len(read_lines(run / "history.csv")) == 3  # header + 2 epochs


def test_evaluate_writes_official_results_and_metrics(pipeline, capsys):
    run, raw = pipeline["run"], pipeline["raw"]
    eval_dir = run / "eval" / "val2014"
    results = json.loads((eval_dir / "v2_OpenEnded_mscoco_val2014_tiny_results.json").read_text())
    questions = json.loads((raw / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    assert all(isinstance(r["answer"], str) for r in results)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert {"overall", "perAnswerType", "perQuestionType"} <= set(metrics)
    assert set(metrics["perAnswerType"]) <= {"yes/no", "number", "other"}
    assert (eval_dir / "report.html").read_text().startswith("<!doctype html>")

    # `vqa score` on the same results file gives the same numbers.
    assert main(["score", "--questions", str(raw / "v2_OpenEnded_mscoco_val2014_questions.json"),
                 "--annotations", str(raw / "v2_mscoco_val2014_annotations.json"),
                 "--results", str(eval_dir / "v2_OpenEnded_mscoco_val2014_tiny_results.json")]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["overall"] == metrics["overall"]
    assert scored["perQuestionType"] == metrics["perQuestionType"]


def test_predict_answers_a_question_about_a_demo_image(pipeline, capsys):
    image = next((pipeline["raw"] / "val2014").glob("*.jpg"))
    assert main(["predict", "--run", str(pipeline["run"]), "--image", str(image),
                 "--question", "What color is the circle?", "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    answers = json.loads((pipeline["run"] / "answers.json").read_text())["answers"]
    assert len(answer["answers"]) == 3
    assert all(a["answer"] in answers for a in answer["answers"])
    scores = [a["score"] for a in answer["answers"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_subprocess_reports_a_bad_run_in_one_sentence(pipeline, tmp_path):
    image = next((pipeline["raw"] / "val2014").glob("*.jpg"))
    result = subprocess.run([sys.executable, "-m", "vqa", "predict", "--run", str(tmp_path), "--image", str(image),
                             "--question", "what?"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --run {tmp_path} is not a run folder (no run.json); pass a folder made by `vqa train --out`."
    )
