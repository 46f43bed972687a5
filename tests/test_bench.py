"""vqa bench --quick: every section runs and writes positive numbers (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from vqa.bench import questions, report, serve, synthetic
from vqa.bench.settings import QUICK
from vqa.cli import main

pytestmark = pytest.mark.slow

SECTIONS = ("machine", "questions", "question_storage", "features", "training", "predict", "scale", "grid", "serve")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    # regions, region_models and learning train models in this suite already (test_bench_sections.py)
    assert main(["bench", "--out", str(out), "--quick", "--sections", ",".join(SECTIONS)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_every_section_is_written_without_error(results):
    for section in SECTIONS:
        assert section in results, section
        assert "error" not in results[section], results[section].get("error")
    assert results["quick"] is True
    assert results["sections"] == list(SECTIONS) and "learning" not in results


def test_an_unknown_section_is_one_sentence(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "r.json"), "--sections", "learning,speed"]) != 0
    err = capsys.readouterr().err
    assert "unknown bench section 'speed' (--sections)" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("section, keys", [
    ("questions", ("project_per_s", "naive_per_s", "speedup")),
    ("question_storage", ("project_bytes_per_question", "per_token_vectors_bytes_per_question", "ratio")),
    ("features", ("end_to_end_images_per_s", "forward_only_images_per_s", "ratio")),
    ("training", ("pipeline_samples_per_s", "in_memory_samples_per_s", "ratio", "peak_rss_bytes",
                  "image_features_bytes")),
    ("predict", ("warm_latency_ms", "cold_start_s", "batch_questions_per_s")),
    ("scale", ("token_ids_per_question_time_ratio_4x_1x", "targets_per_question_time_ratio_4x_1x",
               "epoch_per_question_time_ratio_4x_1x")),
])
def test_section_figures_are_positive(results, section, keys):
    for key in keys:
        value = results[section][key]
        assert isinstance(value, (int, float)) and value > 0, (section, key, value)


def test_storage_ratio_is_the_byte_arithmetic(results):
    storage = results["question_storage"]
    assert storage["per_token_vectors_bytes_per_question"] == 25 * 300 * 4
    assert storage["ratio"] == pytest.approx(
        storage["per_token_vectors_bytes_per_question"] / storage["project_bytes_per_question"], rel=0.01)


def test_summary_rows_name_targets_and_whether_met(results):
    rows = {(row["section"], row["measure"]): row for row in results["summary"]}
    questions = rows[("questions", "questions/s")]
    assert questions["target"] == 100
    assert questions["met"] == (questions["ratio"] >= 100)
    table = report.format_table(results["summary"])
    assert table.splitlines()[0].split() == ["section", "measure", "project", "reference", "ratio", "target",
                                             "met?"]


def test_table_marks_missed_targets():
    rows = [{"section": "features", "measure": "images/s", "project": 1.0, "reference": 2.0, "ratio": 0.5,
             "target": 0.85, "met": False}]
    assert report.format_table(rows).splitlines()[-1].split()[-1] == "NO"


def test_vqa_like_questions_are_reproducible_questions():
    first, again = synthetic.vqa_like_questions(50, seed=3), synthetic.vqa_like_questions(50, seed=3)
    assert first == again
    assert all(question.endswith("?") for question in first)
    assert len(set(first)) > 25


def test_naive_side_falls_back_to_a_named_stand_in(monkeypatch):
    import spacy

    installed = spacy.util.is_package
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name != questions.NAIVE_PACKAGE and installed(name))
    nlp, name = questions.naive_pipeline(lambda message: None)
    assert name.startswith("stand-in")
    assert {"tagger", "parser", "ner"} <= set(nlp.pipe_names)
    assert [token.text for token in nlp("What's on the table?")] == ["What", "'s", "on", "the", "table", "?"]


def test_grid_section_figures_are_positive_and_its_ratios_follow_from_them(results):
    grid = results["grid"]
    assert "error" not in grid, grid.get("error")
    for key in ("streamed_samples_per_s", "in_memory_samples_per_s", "peak_rss_1x_bytes", "peak_rss_4x_bytes",
                "grid_file_1x_bytes", "grid_file_4x_bytes"):
        assert isinstance(grid[key], (int, float)) and grid[key] > 0, (key, grid[key])
    assert grid["ratio"] == pytest.approx(grid["streamed_samples_per_s"] / grid["in_memory_samples_per_s"], rel=0.01)
    assert grid["rss_ratio_4x_1x"] == pytest.approx(grid["peak_rss_4x_bytes"] / grid["peak_rss_1x_bytes"], rel=0.01)
    budget = 0.1 * grid["peak_rss_1x_bytes"]
    assert grid["grid_file_4x_over_rss_budget"] == pytest.approx(grid["grid_file_4x_bytes"] / budget, rel=0.01,
                                                                 abs=0.001)  # stored to 3 decimals


def test_grid_memory_points_train_on_1x_and_4x_the_images_in_files_that_hold_them(results):
    sizes, points = results["sizes"], results["grid"]["points"]
    images = sizes["grid_images"]
    assert (points["1x"]["images"], points["4x"]["images"]) == (images, 4 * images)
    assert (points["1x"]["samples"], points["4x"]["samples"]) == (images, 4 * images)  # one question per image
    height, width, channels = sizes["grid_shape"]
    for factor in (1, 4):  # float16 grids, one row per image, and the file's own overhead
        assert results["grid"][f"grid_file_{factor}x_bytes"] >= factor * images * height * width * channels * 2
    # Each point's peak is its own process's: both start from a process that has not read the split.
    for point in points.values():
        assert 0 < point["rss_before_data_bytes"] <= point["peak_rss_bytes"]


def test_grid_extraction_writes_both_files_and_compares_rates(results):
    extraction = results["grid"]["extraction"]
    for key in ("end_to_end_images_per_s", "forward_only_images_per_s"):
        assert extraction[key] > 0, key
    assert extraction["ratio"] == pytest.approx(
        extraction["end_to_end_images_per_s"] / extraction["forward_only_images_per_s"], rel=0.01)
    height, width, channels = extraction["backbone"]["grid_shape"]
    assert extraction["grid_file_bytes"] >= extraction["images"] * height * width * channels * 2
    assert extraction["feature_file_bytes"] >= extraction["images"] * extraction["backbone"]["feature_dim"] * 2


def test_grid_rows_name_their_targets_and_whether_met(results):
    rows = {(row["section"], row["measure"]): row for row in results["summary"]}
    streamed = rows[("grid", "samples/s (streamed vs memory)")]
    assert streamed["target"] == 0.9 and streamed["met"] == (streamed["ratio"] >= 0.9)
    memory = rows[("grid", "peak RSS MB (4x vs 1x images)")]
    assert memory["target"] == 1.1 and memory["met"] == (memory["ratio"] <= 1.1)
    extraction = rows[("grid", "images/s (files -> fc7+grid vs memory)")]
    assert extraction["target"] == 0.9 and extraction["met"] == (extraction["ratio"] >= 0.9)


# --- serve: a real `vqa serve` child process on 127.0.0.1 (QUICK's serve_* sizes) ---------------------------


def test_serve_answers_every_request_and_stops_cleanly(results):
    result = results["serve"]
    warmup, cache, images = QUICK.serve_warmup_requests, QUICK.serve_cache_requests, QUICK.serve_memory_images
    # warm-up (all clients, then half as many alone), 1 client, all clients, repeated and new images, the
    # image pool once, the memory phase
    sent = (warmup + warmup // 2 + QUICK.serve_single_requests + QUICK.serve_concurrent_requests + 2 * cache
            + images + QUICK.serve_memory_requests)
    assert result["requests_sent"] == sent == result["requests_answered_by_server"]
    assert result["failed_requests"] == [] and result["shutdown_exit_status"] == 0
    assert 0 < result["model_batches"] <= sent
    # the repeated image, the warm-up's new images (every 4th request), the new images, the pool
    assert result["cache"]["entries"] == 1 + warmup // 4 + cache + images


def test_serve_ratios_are_those_of_the_figures(results):
    result, clients = results["serve"], QUICK.serve_clients
    for key in ("requests_per_s_1_client", f"requests_per_s_{clients}_clients", "new_image_ms", "repeated_image_ms",
                "rss_before_bytes", "rss_after_bytes"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["requests_per_s_ratio"] == pytest.approx(
        result[f"requests_per_s_{clients}_clients"] / result["requests_per_s_1_client"], rel=1e-2)
    assert result["cache_ratio"] == pytest.approx(result["new_image_ms"] / result["repeated_image_ms"], rel=1e-2)
    assert result["rss_ratio"] == pytest.approx(result["rss_after_bytes"] / result["rss_before_bytes"], rel=1e-3)
    for latency in (result["latency_ms_1_client"], result[f"latency_ms_{clients}_clients"]):
        assert 0 < latency["p50"] <= latency["p95"]


def test_serve_rows_name_their_targets(results):
    rows = serve.summary_rows(results["serve"])
    assert [row["section"] for row in rows] == ["serve"] * 4
    throughput, cache, latency, memory = rows
    assert throughput["measure"] == f"requests/s ({QUICK.serve_clients} clients vs 1)" and throughput["target"] == 3.0
    assert throughput["met"] == (throughput["ratio"] >= 3.0)
    assert cache["target"] == 2.0 and cache["met"] == (cache["ratio"] >= 2.0)
    assert latency["project"] == results["serve"][f"latency_ms_{QUICK.serve_clients}_clients"]["p50"]
    assert latency["met"] is None
    assert memory["target"] == 1.1 and memory["met"] == (memory["ratio"] <= 1.1)  # lower is better
    assert f"RSS MB after vs before {QUICK.serve_memory_requests} req" in report.format_table(rows)


def test_serve_percentiles_by_hand():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 ms ... 100 ms
    assert serve.percentiles(seconds) == {"p50": 50.5, "p95": 95.0}
    assert serve.percentiles([0.004]) == {"p50": 4.0, "p95": 4.0}
