"""The bench's ``serve`` section (vqa.bench.serve) on tiny sizes: a real `vqa serve` process, every request
answered, the ratios and percentiles computed from the figures it reports (no timing targets asserted)."""

from __future__ import annotations

import dataclasses
import types

import pytest

from vqa.bench import serve
from vqa.bench.report import format_table
from vqa.bench.settings import FULL, QUICK

pytestmark = pytest.mark.slow  # one tiny training and one `vqa serve` process: ~25 s on 2 cores

TINY = {"serve_warmup_requests": 8, "serve_single_requests": 10, "serve_concurrent_requests": 16,
        "serve_clients": 4, "serve_cache_requests": 3, "serve_memory_requests": 12, "serve_memory_images": 3}


def _sizes(**serve_fields):
    """QUICK's sizes with ``serve_*`` fields, as vqa.bench.settings.Sizes will carry them."""
    return types.SimpleNamespace(**{field.name: getattr(QUICK, field.name) for field in dataclasses.fields(QUICK)},
                                 **serve_fields)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return serve.run(_sizes(**TINY), tmp_path_factory.mktemp("serve_bench"), log=lambda message: None)


def test_every_request_is_answered_and_the_server_stops_cleanly(result):
    # warm-up (4 clients, then half as many alone), 1 client, 4 clients, repeated and new images, the pool, memory
    sent = 8 + 4 + 10 + 16 + 3 + 3 + 3 + 12
    assert result["requests_sent"] == sent == result["requests_answered_by_server"]
    assert result["failed_requests"] == [] and result["shutdown_exit_status"] == 0
    assert 0 < result["model_batches"] <= sent
    assert result["cache"]["entries"] == 1 + 2 + 3 + 3  # the repeated image, 2 warm-up images, 3 new, the pool


def test_the_ratios_are_those_of_the_figures(result):
    for key in ("requests_per_s_1_client", "requests_per_s_4_clients", "new_image_ms", "repeated_image_ms",
                "rss_before_bytes", "rss_after_bytes"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["requests_per_s_ratio"] == pytest.approx(
        result["requests_per_s_4_clients"] / result["requests_per_s_1_client"], rel=1e-2)
    assert result["cache_ratio"] == pytest.approx(result["new_image_ms"] / result["repeated_image_ms"], rel=1e-2)
    assert result["rss_ratio"] == pytest.approx(result["rss_after_bytes"] / result["rss_before_bytes"], rel=1e-3)
    for latency in (result["latency_ms_1_client"], result["latency_ms_4_clients"]):
        assert 0 < latency["p50"] <= latency["p95"]


def test_summary_rows_name_the_targets(result):
    rows = serve.summary_rows(result)
    assert [row["section"] for row in rows] == ["serve"] * 4
    throughput, cache, latency, memory = rows
    assert throughput["measure"] == "requests/s (4 clients vs 1)" and throughput["target"] == 3.0
    assert throughput["met"] == (throughput["ratio"] >= 3.0)
    assert cache["target"] == 2.0 and cache["met"] == (cache["ratio"] >= 2.0)
    assert latency["project"] == result["latency_ms_4_clients"]["p50"] and latency["met"] is None
    assert memory["target"] == 1.1 and memory["met"] == (memory["ratio"] <= 1.1)  # lower is better
    assert "RSS MB after vs before 12 req" in format_table(rows)


def test_sizes_come_from_the_settings_fields_or_the_defaults():
    assert serve.serve_sizes(FULL) == serve.ServeSizes()
    assert serve.serve_sizes(QUICK) == serve.QUICK_SIZES
    assert serve.serve_sizes(_sizes(serve_clients=3)).clients == 3
    assert serve.serve_sizes(_sizes(serve_clients=3)).memory_requests == serve.QUICK_SIZES.memory_requests


def test_percentiles_by_hand():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 ms ... 100 ms
    assert serve.percentiles(seconds) == {"p50": 50.5, "p95": 95.0}
    assert serve.percentiles([0.004]) == {"p50": 4.0, "p95": 4.0}
