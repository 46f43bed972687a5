"""Every input read is bounded (issue #21): a device, a FIFO or an oversized file stops in one sentence.

Oversized files are sparse (``os.truncate``): over the real bound, yet they take no disk.
The CLI runs as a real process where time and memory are measured (``os.wait4`` gives the
child's own peak RSS, measured from a small process between).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vqa import bounded_read, id_maps, layout, matfile, split_files, vectors
from vqa.cli import main
from vqa.errors import VQAError
from vqa.metric import RESULTS_MAX_BYTES

MAX_SECONDS = 10
MAX_RSS_BYTES = 1 << 30


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)  # nobody ever writes to it: a reader that waits for one would hang
    return path


@pytest.fixture
def official(tmp_path) -> dict[str, Path]:
    questions = tmp_path / layout.questions_filename("val2014")
    annotations = tmp_path / layout.annotations_filename("val2014")
    questions.write_text(json.dumps({"questions": []}))
    annotations.write_text(json.dumps({"annotations": []}))
    return {"questions": questions, "annotations": annotations}


# Runs ARGV and writes its exit status and peak RSS (KiB) to the file named first. A process started
# from this small one: Linux counts a child's peak RSS from the memory of the process it was spawned
# from (vfork shares it until exec), so a child of the test process would report the test's own peak.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def _run_measured(args: list[str]) -> tuple[int, str, float, int]:
    """Exit status, stderr, seconds and peak RSS in bytes of ``python -m vqa ARGS`` in its own process."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryFile() as err:  # a file, not a pipe:
        # a long traceback cannot block the child
        measured = Path(folder) / "measured"
        process = subprocess.Popen([sys.executable, "-c", _MEASURE, measured, sys.executable, "-m", "vqa",
                                    *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
        killer = threading.Timer(6 * MAX_SECONDS, os.killpg, (process.pid, 9))  # the bug guarded against: a hang
        killer.start()
        try:
            process.wait()
        finally:
            killer.cancel()
        seconds = time.monotonic() - started
        err.seek(0)
        code, rss_kib = (int(n) for n in measured.read_text().split())
        return code, err.read().decode(), seconds, rss_kib * 1024


@pytest.mark.parametrize("kind", ["device", "fifo", "sparse over the bound"])
def test_score_stops_on_an_unbounded_results_file_quickly_and_small(official, tmp_path, kind):
    results = {"device": lambda: Path("/dev/zero"), "fifo": lambda: _fifo(tmp_path / "results.json"),
               "sparse over the bound": lambda: _sparse(tmp_path / "results.json", RESULTS_MAX_BYTES + 1)}[kind]()
    code, err, seconds, rss = _run_measured(["score", "--questions", official["questions"], "--annotations",
                                             official["annotations"], "--results", results])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and str(results) in lines[0], err
    assert ("not a regular file" in lines[0]) == (kind != "sparse over the bound"), lines[0]
    assert seconds < MAX_SECONDS and rss < MAX_RSS_BYTES, (seconds, rss)


@pytest.mark.parametrize("which", ["questions", "annotations"])
def test_an_official_file_over_2_gb_is_refused_naming_its_size(official, tmp_path, capsys, which):
    _sparse(official[which], layout.OFFICIAL_JSON_MAX_BYTES + (1 << 30))
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert main(["score", "--questions", str(official["questions"]), "--annotations", str(official["annotations"]),
                 "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"{official[which]} is 3 GB, over its limit of 2 GB" in err, err


def test_a_config_or_questions_file_that_is_a_device_is_one_sentence(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", "/dev/zero"]) == 1
    assert "config file /dev/zero is not a regular file" in capsys.readouterr().err
    from vqa.questions import read_questions_file

    with pytest.raises(VQAError, match="--questions-file /dev/zero is not a regular file"):
        read_questions_file(Path("/dev/zero"))


def test_a_file_longer_than_its_size_said_is_still_cut_at_the_bound():
    # A /proc file reports size 0 and then goes on, as a file growing while it is read does.
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs Linux's /proc")
    assert status.stat().st_size == 0
    with pytest.raises(VQAError, match="grew past 16 bytes while it was read"):
        bounded_read.read_bytes_capped(status, 16, "status file")
    assert bounded_read.read_bytes_capped(status, 1 << 20, "status file").startswith(b"Name:")


def test_split_text_files_and_id_maps_refuse_fifos_and_oversized_files(tmp_path):
    split = tmp_path / "val2014"
    split.mkdir()
    _fifo(split / split_files.TEXT_FILES["questions"])
    with pytest.raises(VQAError, match="questions.txt is not a regular file"):
        split_files.read_text_columns(split)
    _sparse(tmp_path / "map.txt", id_maps.MAX_BYTES + (1 << 20))
    with pytest.raises(VQAError, match="map.txt is 257 MB, over its limit of 256 MB"):
        id_maps.read_id_map(tmp_path / "map.txt")
    with pytest.raises(VQAError, match="map.txt is 257 MB, over its limit of 256 MB"):
        matfile.read_id_map(tmp_path / "map.txt")
    with pytest.raises(VQAError, match="id map /dev/zero is not a regular file"):
        matfile.read_id_map(Path("/dev/zero"))


def test_vectors_files_that_would_take_unbounded_memory_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    huge = _sparse(tmp_path / "huge.txt", vectors.VECTORS_MAX_BYTES + (1 << 30))
    with pytest.raises(VQAError, match="huge.txt is 17 GB, over its limit of 16 GB"):
        vectors.text_vectors_pipeline(huge)
    endless = _sparse(tmp_path / "zeros.txt", 4 * vectors.FIRST_LINE_MAX_BYTES)  # NUL bytes, no newline
    with pytest.raises(VQAError, match="zeros.txt has a first line over 1 MB long"):
        vectors.text_vectors_pipeline(endless)
    lying = tmp_path / "lying.vec"
    lying.write_text("1000000000 300\ncat 0.1 0.2\n")
    with pytest.raises(VQAError, match="promises 1000000000 vectors of 300 values"):
        vectors.text_vectors_pipeline(lying)


@pytest.mark.parametrize("value", ["1e9", "0", "nan"])
def test_serve_refuses_an_upload_limit_outside_0_to_1024_mb(tmp_path, capsys, value):
    assert main(["serve", "--run", str(tmp_path), "--max-upload-mb", value]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --max-upload-mb must be above 0 and at most 1024, "
                                               f"not {float(value):g}.")
