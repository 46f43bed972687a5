"""Answer every question of a split with a trained run, and score it officially.

Reads a run (RUN/model.keras, answers.json) and preprocessed data (OUT/<split>/questions.h5,
image_features.h5, preprocess.json). Writes, under RUN/eval/<split>/:
    v2_OpenEnded_mscoco_<split>_<run>_results.json   the official results format, one
        answer for every question (a question whose image is missing is answered from a
        zero image vector, and counted), ready for the evaluation server
    metrics.json   where the split has annotations: the official metric's overall,
        perAnswerType and perQuestionType (``vqa.metric``, the code behind ``vqa score``)
    report.html    accuracy charts, answer confusion and an example gallery
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from vqa import metric
from vqa.errors import VQAError
from vqa.predict import check_run_dir, load_run_model
from vqa.preprocess import load_manifest
from vqa.progress import progress
from vqa.storage import read_json, write_json


def results_filename(split: str, run_name: str) -> str:
    """The evaluation server's naming: v2_OpenEnded_mscoco_<split>_<name>_results.json."""
    return f"v2_OpenEnded_mscoco_{split}_{run_name}_results.json"


def predict_split(model, data_dir: Path, split: str, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, int]:
    """Answer scores for every question of a preprocessed split.

    Returns:
        question_ids int64 (N,), scores float32 (N, K), and how many questions had no
        image (answered from a zero image vector).
    """
    from vqa.dataset import gather_features, load_split

    data = load_split(data_dir, split)
    uses_image = "image_features" in [tensor.name for tensor in model.inputs]
    count = len(data.question_ids)
    scores = None
    bar = progress(total=count, desc=f"evaluate {split}", unit="q")
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        inputs = {"question_ids": data.token_ids[start:stop]}
        if uses_image:
            inputs["image_features"] = gather_features(data.image_features, data.image_index[start:stop])
        batch_scores = np.asarray(model.predict_on_batch(inputs), np.float32)
        if scores is None:
            scores = np.zeros((count, batch_scores.shape[1]), np.float32)
        scores[start:stop] = batch_scores
        bar.update(stop - start)
    bar.close()
    missing = int(np.sum(data.image_index < 0)) if uses_image else 0
    return data.question_ids, scores, missing


def evaluate(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "val2014",
             results_path: str | Path | None = None, baseline: str | Path | None = None, batch_size: int = 512,
             log: Callable[[str], None] = print) -> dict:
    """Write the results file for ``split`` and, where it has annotations, its official metrics.

    Returns:
        The metrics written to RUN/eval/<split>/metrics.json (official keys plus counts).
    """
    from vqa import answers as answers_lib

    run_dir = Path(run_dir)
    run = check_run_dir(run_dir)
    data_dir = Path(data_dir) if data_dir else Path(run["data_dir"])
    manifest = load_manifest(data_dir)
    if split not in manifest["splits"]:
        done = ", ".join(manifest["splits"]) or "none"
        raise VQAError(
            f"{data_dir} has no preprocessed {split} (it has: {done}); run `vqa preprocess --splits {split} "
            f"--out {data_dir}` first."
        )
    entry = manifest["splits"][split]
    answers = answers_lib.read_answers(run_dir / "answers.json")
    started = time.monotonic()
    model = load_run_model(run_dir)
    question_ids, scores, missing = predict_split(model, data_dir, split, batch_size)
    if scores is not None and scores.shape[1] != len(answers):
        raise VQAError(f"{run_dir}/model.keras predicts {scores.shape[1]} answers but answers.json lists {len(answers)}; "
                       "the run folder is inconsistent: train it again.")
    best = scores.argmax(axis=1) if len(question_ids) else np.zeros(0, int)
    results = [{"question_id": int(qid), "answer": answers[i]} for qid, i in zip(question_ids, best)]

    eval_dir = run_dir / "eval" / split
    results_path = Path(results_path) if results_path else eval_dir / results_filename(split, run_dir.name)
    write_json(results_path, results, indent=None)
    log(f"{len(results)} answers written to {results_path}"
        + (f" ({missing} questions had no image and were answered from a zero image vector)" if missing else ""))

    metrics: dict = {}
    annotations_file = entry.get("annotations_file")
    if annotations_file:
        if not Path(annotations_file).exists():
            raise VQAError(f"{annotations_file} (the {split} annotations preprocessing read) is gone; "
                           "put it back to score, or score the results file later with `vqa score`.")
        annotations = read_json(annotations_file, "annotations file")["annotations"]
        wanted = {int(q) for q in question_ids}
        if len(wanted) != len(annotations):
            annotations = [a for a in annotations if a["question_id"] in wanted]
            log(f"scoring the {len(wanted)} preprocessed questions of {split} (preprocessed with --limit)")
        scores_ = metric.score(annotations, results)
        metrics = scores_.to_json()
        per_question = scores_.per_question
    else:
        per_question = None
        log(f"{split} has no annotations: upload {results_path} to the VQA evaluation server to score it")
    metrics.update(split=split, run=str(run_dir), num_questions=len(results), questions_without_image=missing,
                   results_file=str(results_path), seconds=round(time.monotonic() - started, 1))
    write_json(eval_dir / "metrics.json", metrics)
    try:
        from vqa.report import write_report
    except ImportError:  # the report module is optional
        write_report = None
    if write_report is not None:
        report = write_report(eval_dir / "report.html", run_dir=run_dir, data_dir=data_dir, split=split,
                              scores=scores, question_ids=question_ids, answers=answers, metrics=metrics,
                              per_question=per_question, baseline=baseline)
        log(f"report: {report}")
    return metrics


def load_question_table(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    """question_ids, image_ids and image_index of a preprocessed split, for reports."""
    with h5py.File(Path(data_dir) / split / "questions.h5", "r") as f:
        return {key: f[key][...] for key in ("question_ids", "image_ids", "image_index")}
