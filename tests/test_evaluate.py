"""`vqa evaluate` on a tiny run: the official results file, metrics.json, missing images, test-dev splits.

One run is trained for the module on official-layout data made in tmp_path: train2014
(4 images), val2014 (3 images, the file of image 7 deleted, so its 3 questions have no
image) and test-dev2015 (2 images, no annotations, like the real test-dev).
"""

import json
import shutil

import numpy as np
import pytest

from helpers import THREE_QUESTIONS as QUESTIONS
from helpers import three_question_items as _items
from helpers import write_official_split
from vqa.cli import main
from vqa.errors import VQAError

pytestmark = pytest.mark.slow  # one tiny training for the module: ~10 s on 2 cores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_backbone, vectors_factory):
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.evaluate import evaluate
    from helpers import preprocess
    from vqa.train import train

    root = tmp_path_factory.mktemp("evaluate")
    raw, out, run = root / "raw", root / "processed", root / "runs" / "tiny"
    write_official_split(raw, "train2014", _items([1, 2, 3, 4]))
    write_official_split(raw, "val2014", _items([5, 6, 7]))
    (raw / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    write_official_split(raw, "test-dev2015", _items([8, 9]), annotated=False)
    words = {word for question, _, _ in QUESTIONS for word in question.split()}
    preprocess(raw, out, ["train2014", "val2014", "test-dev2015"], vectors=str(vectors_factory(words)),
               weights=str(tiny_backbone), log=lambda message: None)
    config = Config(data=DataConfig(data_dir=str(out), val_split=""),
                    model=ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8),
                    train=TrainConfig(epochs=1, batch_size=16))
    train(out, run, config, log=lambda message: None)
    metrics = {split: evaluate(run, out, split=split, log=lambda message: None)
               for split in ("val2014", "test-dev2015")}
    return {"raw": raw, "out": out, "run": run, "metrics": metrics, "root": root}


def _results(path):
    return {r["question_id"]: r["answer"] for r in json.loads(path.read_text())}


def test_cli_prints_metrics_json_as_the_last_stdout_line(tiny, capsys):
    assert main(["evaluate", "--run", str(tiny["run"]), "--data", str(tiny["out"]), "--split", "val2014"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tiny["run"] / "eval" / "val2014" / "metrics.json").read_text())
    assert printed == written | {"seconds": printed["seconds"]}
    assert {"overall", "perAnswerType", "perQuestionType"} <= set(printed)
    assert set(printed["perAnswerType"]) == {"yes/no", "number", "other"}
    assert set(printed["perQuestionType"]) == {"is there", "how many", "what color"}


def test_results_answer_every_question_in_the_official_format(tiny):
    eval_dir = tiny["run"] / "eval" / "val2014"
    results_path = eval_dir / "v2_OpenEnded_mscoco_val2014_tiny_results.json"
    results = json.loads(results_path.read_text())
    questions = json.loads((tiny["raw"] / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    vocabulary = json.loads((tiny["run"] / "answers.json").read_text())["answers"]
    assert [r["question_id"] for r in results] == [q["question_id"] for q in questions]
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in vocabulary for r in results)
    assert tiny["metrics"]["val2014"]["results_file"] == str(results_path)
    assert tiny["metrics"]["val2014"]["num_questions"] == 9


def test_a_question_without_image_is_answered_from_a_zero_vector_and_counted(tiny):
    import keras

    from vqa.dataset import load_split

    assert tiny["metrics"]["val2014"]["questions_without_image"] == 3
    data = load_split(tiny["out"], "val2014")
    missing = data.image_index < 0
    assert missing.sum() == 3
    model = keras.saving.load_model(tiny["run"] / "model.keras", compile=False)
    scores = model.predict_on_batch({"question_ids": data.token_ids[missing],
                                     "image_features": np.zeros((3, data.feature_dim), np.float32)})
    vocabulary = json.loads((tiny["run"] / "answers.json").read_text())["answers"]
    results = _results(tiny["run"] / "eval" / "val2014" / "v2_OpenEnded_mscoco_val2014_tiny_results.json")
    assert [results[int(q)] for q in data.question_ids[missing]] == [vocabulary[i] for i in np.argmax(scores, 1)]


def test_metrics_match_vqa_score_on_the_official_files(tiny, capsys):
    metrics = tiny["metrics"]["val2014"]
    assert main(["score", "--questions", str(tiny["raw"] / "v2_OpenEnded_mscoco_val2014_questions.json"),
                 "--annotations", str(tiny["raw"] / "v2_mscoco_val2014_annotations.json"),
                 "--results", metrics["results_file"]]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored == {key: metrics[key] for key in ("overall", "perAnswerType", "perQuestionType")}


def test_a_split_without_annotations_gets_results_only(tiny):
    metrics = tiny["metrics"]["test-dev2015"]
    eval_dir = tiny["run"] / "eval" / "test-dev2015"
    assert "overall" not in metrics and "perAnswerType" not in metrics
    assert metrics["num_questions"] == 6 and metrics["questions_without_image"] == 0
    results = json.loads((eval_dir / "v2_OpenEnded_mscoco_test-dev2015_tiny_results.json").read_text())
    questions = json.loads((tiny["raw"] / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    assert json.loads((eval_dir / "metrics.json").read_text()) == metrics
    assert (eval_dir / "report.html").exists()


def test_small_batches_and_a_custom_results_file_give_the_same_answers(tiny, tmp_path):
    from vqa.evaluate import evaluate

    custom = tmp_path / "mine.json"
    metrics = evaluate(tiny["run"], tiny["out"], split="val2014", results_path=custom, batch_size=4,
                       log=lambda message: None)
    assert metrics["results_file"] == str(custom)
    default = tiny["run"] / "eval" / "val2014" / "v2_OpenEnded_mscoco_val2014_tiny_results.json"
    assert _results(custom) == _results(default)
    assert metrics["overall"] == tiny["metrics"]["val2014"]["overall"]


def test_a_split_that_was_not_preprocessed_is_one_sentence(tiny, capsys):
    assert main(["evaluate", "--run", str(tiny["run"]), "--data", str(tiny["out"]), "--split", "test2015"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"error: {tiny['out']} has no preprocessed test2015 (it has: train2014, val2014, test-dev2015); "
                     f"run `vqa preprocess --splits test2015 --out {tiny['out']}` first.")


def test_a_baseline_not_yet_evaluated_is_refused_before_any_work(tiny, tmp_path):
    from vqa.evaluate import evaluate

    baseline = tmp_path / "baseline"
    shutil.copytree(tiny["run"], baseline, ignore=shutil.ignore_patterns("eval"))
    with pytest.raises(VQAError, match=f"--baseline {baseline} has not been evaluated on val2014 yet"):
        evaluate(tiny["run"], tiny["out"], split="val2014", results_path=tmp_path / "r.json", baseline=baseline)
    assert not (tmp_path / "r.json").exists()


def test_data_with_another_vocabulary_is_refused(tiny, tmp_path):
    from vqa.evaluate import evaluate

    other = tmp_path / "other"
    shutil.copytree(tiny["out"], other)
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["words"][2], vocab["words"][3] = vocab["words"][3], vocab["words"][2]
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(VQAError, match="differs from the vocabulary"):
        evaluate(tiny["run"], other, split="val2014", log=lambda message: None)


def test_the_report_draws_the_baseline_run_beside_this_one(tiny, tmp_path, capsys):
    baseline = tmp_path / "copy-of-tiny"
    shutil.copytree(tiny["run"], baseline)  # already evaluated on val2014 by the fixture
    assert main(["evaluate", "--run", str(tiny["run"]), "--data", str(tiny["out"]), "--split", "val2014",
                 "--baseline", str(baseline)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    page = (tiny["run"] / "eval" / "val2014" / "report.html").read_text(encoding="utf-8")
    assert metrics["report"] == str(tiny["run"] / "eval" / "val2014" / "report.html")
    assert f"baseline copy-of-tiny: <b>{metrics['overall']:.2f}</b>" in page
    assert page.count('class="bar base"') == page.count('class="bar model"') == 6
    assert page.count("image 7 not available") == 3
