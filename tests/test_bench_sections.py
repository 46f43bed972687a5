"""The bench's regions, region_models and learning sections: their data writers, their figures' structure, their
summary rows.

Smoke-sized: the regions section's two training points and the region_models section's two children run in
this process (no RSS meaning), the learning section trains one tiny model and its reference; ``vqa bench
--quick`` (test_bench.py) runs the other sections as the bench does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import math

from vqa.bench import learning, learning_rows, region_models, regions
from vqa.bench.learning_data import DATASETS, MAX_QUESTION_LENGTH, write_learning_data
from vqa.bench.settings import QUICK, TARGETS
from vqa.bench.synthetic import SPLIT


def test_region_out_holds_adaptive_boxes_written_by_the_region_writer(tmp_path):
    from vqa import dataset, regions as region_file
    from vqa.streamed_batches import StreamedBatches

    sizes = {}
    for factor in (1, 4):
        out = regions.write_synthetic_region_out(tmp_path / f"{factor}x", 12 * factor, 12 * factor, 16, (2, 12),
                                                 seed=factor)
        path = region_file.region_path(out / SPLIT)
        sizes[factor] = path.stat().st_size
        info = region_file.read_region_info(path)
        assert (len(info.image_ids), info.feature_dim, info.dtype) == (12 * factor, 16, "float16")
        assert 2 <= info.max_boxes <= 12 and 2 * 12 * factor <= info.total_boxes <= 12 * 12 * factor
        assert sizes[factor] >= info.total_boxes * 16 * 2  # float16 features, plus boxes and the file's overhead
    assert sizes[4] > sizes[1]
    data = dataset.load_split(out, SPLIT, "regions")
    batches = StreamedBatches(data, 8, 1000, training=True)
    try:
        inputs, targets = batches[0]
        assert inputs["region_features"].shape[:2] == inputs["region_mask"].shape
        assert inputs["region_mask"].sum(axis=1).min() >= 2 and targets.shape == (8, 1000)
    finally:
        batches.close()
        data.close()


def test_regions_section_ratios_follow_from_its_points(tmp_path, monkeypatch):
    # Both points in this process: the structure and arithmetic of the figures, not their values. One box count
    # gives every batch one shape, so the model is traced once (the section itself draws 10-100 boxes).
    monkeypatch.setattr(regions, "run_in_child", lambda function, **kwargs: regions.region_training_child(**kwargs))
    sizes = dataclasses.replace(QUICK, region_images=16, region_batch=8, region_boxes=(6, 6))
    result = regions.run(sizes, tmp_path, lambda line: None)
    for key in ("streamed_samples_per_s", "in_memory_samples_per_s", "peak_rss_1x_bytes", "peak_rss_4x_bytes",
                "region_file_1x_bytes", "region_file_4x_bytes", "rss_budget_bytes"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["streamed_samples_per_s"] / result["in_memory_samples_per_s"],
                                            rel=0.01)
    assert result["rss_ratio_4x_1x"] == pytest.approx(result["peak_rss_4x_bytes"] / result["peak_rss_1x_bytes"],
                                                      rel=0.01)
    assert (result["target"], result["rss_target"]) == (TARGETS["regions"], TARGETS["regions_memory"]) == (0.95, 1.1)
    assert result["region_file_4x_bytes"] > result["region_file_1x_bytes"]
    assert (result["boxes_1x"], result["boxes_4x"]) == (16 * 6, 64 * 6)
    assert (result["points"]["1x"]["samples"], result["points"]["4x"]["samples"]) == (16, 64)
    rows = regions.summary_rows(result)
    assert [row["section"] for row in rows] == ["regions"] * 3
    streamed, memory, file_row = rows
    assert streamed["met"] == (streamed["ratio"] >= 0.95)
    assert memory["met"] == (memory["ratio"] <= 1.1)  # lower is better
    assert file_row["target"] == regions.MIN_FILE_OVER_BUDGET


def test_region_models_section_times_mcan_beside_updown_at_quick_sizes(tmp_path, monkeypatch):
    # The two children in this process (a child costs a TensorFlow import); QUICK sizes as `vqa bench --quick`.
    monkeypatch.setattr(region_models, "run_in_child", lambda function, timeout_s=None, **kwargs:
                        getattr(region_models, function.rpartition(".")[2])(**kwargs))
    lines = []
    result = region_models.run(QUICK, tmp_path, lines.append)
    for key in ("mcan_samples_per_s", "updown_samples_per_s", "ratio", "mcan_predict_ms", "updown_predict_ms",
                "predict_ratio", "region_file_read_ms"):
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["mcan_samples_per_s"] / result["updown_samples_per_s"], rel=0.01)
    assert result["predict_ratio"] == pytest.approx(result["mcan_predict_ms"] / result["updown_predict_ms"],
                                                    rel=0.01)
    training = result["training"]
    for name in ("mcan", "updown"):  # an untimed epoch, then QUICK's rounds; each model as its recipe optimises it
        assert len(training[name]["epoch_seconds"]) == 1 + QUICK.region_models_rounds
        assert len(result["predict"][name]["predict_ms_each"]) == QUICK.region_models_predict_repeats
    assert (training["mcan"]["optimizer"], training["updown"]["optimizer"]) == ("Adam", "Adamax")
    assert training["mcan"]["model_config"]["layers"] == 1
    assert training["updown"]["model_config"]["question_rnn"] == "gru"
    assert 2 <= result["predict_boxes"] <= 8 and len(lines) == 2
    rows = region_models.summary_rows(result)
    assert [row["measure"] for row in rows] == ["train samples/s (mcan vs updown)",
                                                "predict ms/question (mcan vs updown)"]
    assert all(row["target"] is None and row["met"] is None for row in rows)  # a ratio without a target
    assert (rows[0]["ratio"], rows[1]["project"]) == (result["ratio"], result["mcan_predict_ms"])


def test_learning_datasets_preprocess_into_every_input_their_models_read(tmp_path):
    from vqa import dataset

    sources = {"scenes-regions": ("region-mean", "regions"), "fc7-scenes": ("fc7",),
               "grid-shapes": ("grid-mean", "grid")}
    for name in DATASETS:
        data = write_learning_data(name, tmp_path / name, 40, 20, quick=True, log=lambda line: None)
        assert data.train_questions >= 30 and data.val_questions >= 15 and data.truncated_questions == 0
        for source in sources[name]:
            split = dataset.load_split(data.out_dir, "val2014", source)
            try:
                assert (split.image_index >= 0).all() and split.token_ids.shape[1] == MAX_QUESTION_LENGTH
                assert (split.score_values.max(axis=1) > 0).mean() > 0.9  # answers are in the vocabulary
            finally:
                split.close()
    assert set(learning.fitting_models(("vector",))) == {"deeper-lstm-norm-i", "question-only", "seed-concat",
                                                         "bow-mlp"}
    assert {"san", "multi-glimpse"} <= set(learning.fitting_models(("vector", "grid")))


def test_learning_section_compares_a_model_with_the_reference_and_keeps_it(tmp_path, monkeypatch):
    sizes = dataclasses.replace(QUICK, learning_datasets=(("fc7-scenes", ("question-only",)),),
                                learning_train_questions=40, learning_val_questions=20)
    lines = []
    result = learning.run(sizes, tmp_path / "work", lines.append, keep=tmp_path / "kept")
    (row,) = result["runs"]
    assert (row["dataset"], row["size"], row["model"], row["source"]) == ("fc7-scenes", "1x", "question-only", "none")
    for key in ("val_vqa_accuracy", "reference_val_vqa_accuracy"):
        assert 0 <= row[key] <= 100
    if row["reference_val_vqa_accuracy"] > 0:
        assert row["ratio"] == pytest.approx(row["val_vqa_accuracy"] / row["reference_val_vqa_accuracy"], abs=1e-3)
    assert row["target"] == result["target"] == TARGETS["learning"] == 0.97
    assert len(row["val_vqa_accuracy_each_epoch"]) == row["epochs"] == 2
    assert len(row["reference_val_vqa_accuracy_each_epoch"]) == row["reference_epochs"] == 2
    assert 0 < row["steps_to_90_percent"] <= row["epochs"] * row["steps_per_epoch"]
    assert result["recipe_overrides"] == {"model": dict(QUICK.learning_model), "epochs": 2}
    assert "QUICK" in result["note"] and len(lines) == 1
    (summary,) = learning.summary_rows(result)
    assert summary["measure"] == "fc7-scenes 1x question-only: val acc" and summary["target"] == 0.97

    # A rerun with the same recipe and code trains nothing: the finished run and its reference are kept on disk.
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == [
        "fc7-scenes_1x_question-only.json", "fc7-scenes_1x_reference_none.json"]

    def no_training(*args, **kwargs):
        raise RuntimeError("trained again")

    monkeypatch.setattr(learning, "train_project", no_training)
    lines = []
    again = learning.run(sizes, tmp_path / "work", lines.append, keep=tmp_path / "kept")
    assert again["runs"] == result["runs"] and again["datasets"] == result["datasets"]
    assert len(lines) == 1 and "kept from" in lines[0] and str(tmp_path / "kept") in lines[0]

    # Another recipe, other code or a damaged file: trained again (here, the stand-in trainer's error row).
    for change in ("recipe", "code", "damaged"):
        changed = dataclasses.replace(sizes, learning_epochs=1) if change == "recipe" else sizes
        if change == "code":
            monkeypatch.setattr(learning_rows, "code_fingerprint", lambda: "another version")
        if change == "damaged":
            monkeypatch.undo()
            monkeypatch.setattr(learning, "train_project", no_training)
            (tmp_path / "kept" / "fc7-scenes_1x_question-only.json").write_text('{"key": ')
        (error_row,) = learning.run(changed, tmp_path / "work", lambda line: None, keep=tmp_path / "kept")["runs"]
        assert error_row["error"] == "RuntimeError: trained again", change


def test_reference_models_read_every_input_kind():
    from vqa.visual import VisualSpec

    for kind, spec, inputs in (
            (None, None, {"question_ids": np.ones((3, 5), np.int32)}),
            ("vector", VisualSpec("vector", (6,)), {"image_features": np.ones((3, 6), np.float32)}),
            ("grid", VisualSpec("grid", (2, 2, 4)), {"image_grid": np.ones((3, 2, 2, 4), np.float32)}),
            ("regions", VisualSpec("regions", (4,)), {"region_features": np.ones((3, 7, 4), np.float32),
                                                      "region_mask": np.tile([1, 1, 1, 0, 0, 0, 0], (3, 1))})):
        model = learning.build_reference(kind, spec, vocabulary_size=9, max_length=5, num_answers=11)
        scores = model.predict({"question_ids": np.ones((3, 5), np.int32), **inputs}, verbose=0)
        assert scores.shape == (3, 11) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)


def test_steps_to_reach_ninety_percent_by_hand():
    assert learning.steps_to_reach([10.0, 50.0, 89.0, 95.0, 100.0], 100.0, 8) == 4 * 8
    assert learning.steps_to_reach([90.0, 80.0], 100.0, 3) == 3
    assert learning.steps_to_reach([0.0, 0.0], 0.0, 5) == 5
