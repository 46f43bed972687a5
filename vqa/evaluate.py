"""Answer every question of a split with a trained run, and score it officially.

Reads a run (its model and run description, ``vqa.run_folder``; its answer and question
vocabularies and backbone description) and preprocessed data (the manifest, the question
vocabulary, the backbone description, the split's question arrays and text columns
(``vqa.split_files``) and image features (``vqa.features``)).
Writes, in the run's evaluation folder for the split (``vqa.run_folder.eval_dir``):
    the results file (official naming, ``vqa.layout.results_filename``)   the official results
        format, one answer for every question (a question whose image is missing is answered
        from a zero image vector, and counted), ready for the evaluation server
    the evaluation metrics   the official metric's overall, perAnswerType and perQuestionType
        (``vqa.metric``, the code behind ``vqa score``) where the split has annotations,
        plus counts (num_questions, questions_without_image) for every split
    the report   accuracy charts beside a baseline run, answer confusion and an example
        gallery (``vqa.report``); for an attention run, the gallery's attention maps, computed
        for its examples only, from the split's image input (``gallery_attention``)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from vqa import layout, metric, run_folder, sources, split_files, visual
from vqa.box_drawing import BoxMaps
from vqa.errors import VQAError
from vqa.names import QUESTION_IDS
from vqa.locks import folder_lock
from vqa.run_folder import check_run_dir, load_run_model
from vqa.manifest import load_manifest
from vqa.paths import check_outputs
from vqa.progress import progress
from vqa.storage import write_json


def predict_split(model, data_dir: Path, split: str, batch_size: int = 512,
                  features: str = "fc7") -> tuple[np.ndarray, np.ndarray, int]:
    """Answer scores for every question of a preprocessed split.

    Every batch has the same number of questions (the last one is zero-padded and cut back),
    so Keras traces its predict function once per input shape. The image input is the run's
    ``features`` source (``RunInfo.features``), held in memory or streamed from its file
    (``vqa.streamed_batches``); a model without an image input reads none.

    Returns:
        question_ids int64 (N,), scores float32 (N, K), and how many questions had no
        image in that input (answered from zeros).

    Raises:
        VQAError: the split's questions are longer than the model reads, or its image input
            is of another kind or shape than the model takes.
    """
    from vqa.dataset import load_split

    if batch_size < 1:
        raise VQAError(f"--batch-size must be at least 1, not {batch_size}.")
    inputs_by_name = {tensor.name: tensor for tensor in model.inputs}
    reads = visual.kind_of_model(inputs_by_name)
    data = load_split(data_dir, split, features if reads else None)
    try:
        return _predict_loaded(model, data, data_dir, inputs_by_name, reads, batch_size)
    finally:
        data.close()


def _predict_loaded(model, data, data_dir: Path, inputs_by_name: dict, reads,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    from vqa.streamed_batches import batches_for

    split = data.split
    model_length = inputs_by_name[QUESTION_IDS].shape[1]
    if model_length is not None and data.max_length != model_length:
        raise VQAError(f"{data_dir}/{split} holds questions of {data.max_length} tokens but the model reads "
                       f"{model_length}; evaluate on data preprocessed with --max-question-length {model_length}.")
    if reads is not None and data.spec != reads[1]:
        raise VQAError(f"{data_dir}/{split} holds {data.spec.kind} image inputs of shape {data.spec.shape} "
                       f"({data.source}) but the model reads {reads[1].kind} inputs of shape {reads[1].shape}; "
                       "evaluate on features from the run's backbone or import.")
    count = data.num_questions
    num_answers = model.outputs[0].shape[-1]
    scores = np.zeros((count, num_answers), np.float32)
    if count == 0:
        return data.question_ids, scores, 0
    size = min(batch_size, count)
    batches = batches_for(data, size, num_answers, with_targets=False, include_images=reads is not None)
    bar = progress(total=count, desc=f"evaluate {split}", unit="q")
    try:
        for batch, start in enumerate(range(0, count, size)):
            stop = min(start + size, count)
            inputs = visual.pad_inputs(batches[batch], size)
            scores[start:stop] = np.asarray(model.predict_on_batch(inputs), np.float32)[: stop - start]
            bar.update(stop - start)
    finally:
        bar.close()
        batches.close()
    missing = int(np.sum(data.image_index < 0)) if reads is not None else 0
    return data.question_ids, scores, missing


def gallery_attention(maps_model, data_dir: Path, split: str, rows: list[int],
                      features: str) -> dict[int, np.ndarray | BoxMaps]:
    """Attention maps of a few questions of a split, read from its image input (the gallery's, not all).

    Args:
        maps_model: ``vqa.attention.attention_model`` of the run's model.
        data_dir: the preprocessed folder.
        split: the split.
        rows: question rows in the split's order.
        features: the run's ``vqa.visual`` source.

    Returns:
        row -> float32 (G, H, W), for the rows whose image has an input (the others are left
        out); over detector regions, row -> ``vqa.box_drawing.BoxMaps``: (G, K) maps over the
        image's K boxes, with the boxes and image size its region file records.
    """
    from vqa.dataset import load_split

    data = load_split(data_dir, split, features)
    try:
        kept = [row for row in rows if data.image_index[row] >= 0]
        if not kept:
            return {}
        inputs = {QUESTION_IDS: data.token_ids[kept], **data.visual.read(data.image_index[kept])}
        maps = np.asarray(maps_model.predict_on_batch(inputs), np.float32)
        if maps.ndim == 3 and data.grid_shape is None:  # maps over detector boxes
            return _box_maps(maps, Path(data_dir) / split, kept, data.image_index[kept])
        if maps.ndim == 3:  # a grid read as regions: its cells, row-major
            maps = maps.reshape(*maps.shape[:2], *data.grid_shape[:2])
    finally:
        data.close()
    return dict(zip(kept, maps))


def _box_maps(maps: np.ndarray, split_dir: Path, kept: list[int], file_rows: np.ndarray) -> dict[int, BoxMaps]:
    """Each row's maps (G, K_max) cut to its image's boxes, beside the boxes its region file holds."""
    from vqa import regions

    with regions.RegionReader(regions.region_path(split_dir)) as reader:
        batch = reader.read(file_rows)
    return {row: BoxMaps(maps[index][:, :int(batch.mask[index].sum())], batch.boxes[index][batch.mask[index]],
                         tuple(float(side) for side in batch.sizes[index]))
            for index, row in enumerate(kept)}


def check_compatible(run_dir: Path, data_dir: Path) -> None:
    """Refuse preprocessed data whose token ids or image features mean something else to the run.

    Token id 7 is only the run's word 7 when OUT's vocabulary is the run's, and features only
    match when the same backbone made them.

    Raises:
        VQAError: naming the file that differs.
    """
    from vqa import text as text_lib

    if text_lib.vocabulary_path(data_dir).exists():
        if text_lib.read_vocabulary(data_dir) != text_lib.read_vocabulary(run_dir):
            raise VQAError(f"{text_lib.vocabulary_path(data_dir)} differs from the vocabulary {run_dir} was trained with; "
                           "pass the run's own preprocessed folder as --data (or add the split to it with "
                           "`vqa preprocess --out` that folder).")
    from vqa import backbone as backbone_lib

    data_backbone, run_backbone = backbone_lib.read_backbone(data_dir), backbone_lib.read_backbone(run_dir)
    # Only what changes the features counts: a field added by a later vqa must not block evaluation.
    if data_backbone and run_backbone and not backbone_lib.same_features(data_backbone, run_backbone):
        raise VQAError(f"{data_dir} holds image features from another backbone than {run_dir} was trained on "
                       f"({data_backbone.kind} {data_backbone.weights} vs {run_backbone.kind} "
                       f"{run_backbone.weights}); pass the run's own preprocessed folder as --data.")


def baseline_metrics_path(baseline: str | Path, split: str) -> Path:
    """Where a baseline run's evaluation of ``split`` is, checked to exist.

    Raises:
        VQAError: the baseline is not a run, or has not been evaluated on ``split``.
    """
    baseline = Path(baseline)
    check_run_dir(baseline)
    path = run_folder.eval_metrics_path(baseline, split)
    if not path.exists():
        raise VQAError(f"--baseline {baseline} has not been evaluated on {split} yet; run "
                       f"`vqa evaluate --run {baseline} --split {split}` first.")
    return path


def evaluate(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "val2014",
             results_path: str | Path | None = None, baseline: str | Path | None = None, batch_size: int = 512,
             log: Callable[[str], None] = print) -> dict:
    """Write the results file for ``split``, its metrics and its report.

    Args:
        run_dir: the run (``vqa train --out``).
        data_dir: the preprocessed folder holding ``split`` (default: the one the run was trained on).
        split: e.g. "val2014", or "test-dev2015" (no annotations: results and counts only).
        results_path: where the results file goes (default: official naming in the run's evaluation folder).
        baseline: another run evaluated on the same split, drawn beside this one in the report.
        batch_size: questions per model call.
        log: where progress sentences go.

    Returns:
        The metrics written to the run's evaluation folder: official keys (overall,
        perAnswerType, perQuestionType) when the split has annotations, plus split, run,
        num_questions, questions_without_image, results_file, report and seconds.

    Raises:
        VQAError: a run, data folder, split or baseline that cannot be used, named.
    """
    from vqa import answers as answers_lib

    run_dir = Path(run_dir)
    run = check_run_dir(run_dir)
    data_dir = Path(data_dir) if data_dir else Path(run.data_dir)
    manifest = load_manifest(data_dir)
    if split not in manifest.splits:
        done = ", ".join(manifest.splits) or "none"
        raise VQAError(
            f"{data_dir} has no preprocessed {split} (it has: {done}); run `vqa preprocess --splits {split} "
            f"--out {data_dir}` first."
        )
    check_compatible(run_dir, data_dir)
    baseline_path = baseline_metrics_path(baseline, split) if baseline else None
    entry = manifest.splits[split]
    annotations_file = entry.annotations_file
    if annotations_file and not Path(annotations_file).exists():
        raise VQAError(f"{annotations_file} (the {split} annotations preprocessing read) is gone; put it back "
                       "to score, or preprocess the split again from where the files are now.")
    check_outputs({f"the {split} annotations file": annotations_file, f"the {split} questions file":
                   entry.questions_file, "the --baseline metrics file": baseline_path,
                   "the run's model": run_folder.model_path(run_dir), "the run's description":
                   run_folder.run_info_path(run_dir), "the run's answers": answers_lib.answers_path(run_dir)},
                  {f"the {split} evaluation metrics file": run_folder.eval_metrics_path(run_dir, split),
                   f"the {split} report": run_folder.report_path(run_dir, split), "--results": results_path})
    answers = answers_lib.read_answers(run_dir)
    with folder_lock(run_folder.eval_dir(run_dir, split), "evaluate"):
        return _evaluate_locked(run_dir, data_dir, split, results_path, baseline_path, batch_size, log,
                                annotations_file, answers)


def _evaluate_locked(run_dir: Path, data_dir: Path, split: str, results_path: str | Path | None,
                     baseline_path: Path | None, batch_size: int, log: Callable[[str], None],
                     annotations_file: str | None, answers: list[str]) -> dict:
    started = time.monotonic()
    annotations = None
    if annotations_file:  # checked against what preprocessing kept before any work is done
        kept = split_files.read_questions(Path(data_dir) / split).question_ids
        annotations, total = sources.kept_annotations(Path(annotations_file), kept, split, data_dir)
        if len(annotations) != total:
            log(f"scoring the {len(annotations)} questions preprocessing kept of the {total} in {annotations_file}")
    model = load_run_model(run_dir)
    if model.outputs[0].shape[-1] != len(answers):
        raise VQAError(f"{run_folder.model_path(run_dir)} predicts {model.outputs[0].shape[-1]} answers but "
                       f"its answer vocabulary lists {len(answers)}; the run folder is inconsistent: train it again.")
    run = run_folder.read_run_info(run_dir)
    question_ids, scores, missing = predict_split(model, data_dir, split, batch_size,
                                                  run.features if run else "fc7")
    best = scores.argmax(axis=1)
    results = [{"question_id": int(qid), "answer": answers[i]} for qid, i in zip(question_ids, best)]

    eval_dir = run_folder.eval_dir(run_dir, split)
    report = run_folder.report_path(run_dir, split)
    results_path = Path(results_path) if results_path else eval_dir / layout.results_filename(split, run_dir.name)
    write_json(results_path, results, indent=None)
    log(f"{len(results)} answers written to {results_path}"
        + (f" ({missing} questions had no image and were answered from a zero image vector)" if missing else ""))

    metrics: dict = {}
    per_question = None
    if annotations is not None:
        scored = metric.score(annotations, results)
        metrics = scored.to_json()
        per_question = scored.per_question
    else:
        log(f"{split} has no annotations: upload {results_path} to the VQA evaluation server to score it")
    metrics.update(split=split, run=str(run_dir), num_questions=len(results), questions_without_image=missing,
                   results_file=str(results_path), report=str(report),
                   seconds=round(time.monotonic() - started, 1))
    run_folder.write_eval_metrics(run_dir, split, metrics)

    from vqa.report import gallery_rows, write_report

    attention = names = None
    from vqa.attention import attention_layers

    if attention_layers(model):
        from vqa.attention import attention_model
        from vqa.heatmap import map_names

        maps_model = attention_model(model)
        names = map_names(run.model if run else model.name, int(maps_model.output.shape[1]))
        attention = gallery_attention(maps_model, data_dir, split, gallery_rows(len(question_ids)),
                                      run.features if run else "grid") or None
    write_report(report, run_dir=run_dir, data_dir=data_dir, split=split, scores=scores,
                 question_ids=question_ids, answers=answers, metrics=metrics, per_question=per_question,
                 annotations=annotations, baseline=baseline_path, attention=attention, map_names=names)
    log(f"report: {report}")
    return metrics
