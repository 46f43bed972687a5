"""Issue 11, data loss: a lock on every output folder, output paths that collide, an unpack that never deletes.

Each test reproduces a case of the hostile run: before the fix the second command silently
overwrote the first's files, or unpack removed the user's images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from helpers import three_question_items, write_official_split, write_tiny_out
from vqa.cli import main
from vqa.download import download, unpack
from vqa.errors import VQAError
from vqa.locks import folder_lock, lock_path

REPO = Path(__file__).resolve().parents[1]
IN_USE = "{folder} is in use by `vqa {command}` (process {pid}); wait for it to finish or stop it, then run this command again."

HOLDER = textwrap.dedent("""
    import sys, time
    from vqa.locks import folder_lock
    with folder_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        time.sleep(600)
""")


def _hold(folder: Path, command: str) -> subprocess.Popen:
    """Another process holding the lock on ``folder``, as a running `vqa <command>` would."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), command], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def holder():
    started = []

    def start(folder: Path, command: str) -> subprocess.Popen:
        started.append(_hold(folder, command))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()
        process.stdout.close()


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes, but the lock file a holder in a test keeps there."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p != lock_path(p.parent)}


# --- the lock --------------------------------------------------------------------------------------------

def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, holder):
    folder = tmp_path / "out"
    process = holder(folder, "train")
    with pytest.raises(VQAError) as error:
        with folder_lock(folder, "preprocess"):
            pass
    assert str(error.value) == IN_USE.format(folder=folder, command="train", pid=process.pid)
    # Two holders in one process conflict too (two open file descriptions).
    other = tmp_path / "other"
    with folder_lock(other, "evaluate"):
        with pytest.raises(VQAError, match=f"process {os.getpid()}"):
            with folder_lock(other, "evaluate"):
                pass
    assert not lock_path(other).exists()  # released: the lock file goes with it


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    folder = tmp_path / "run"
    process = holder(folder, "train")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lock_path(folder).exists()  # stale: it still names the dead process
    with folder_lock(folder, "train"):
        assert lock_path(folder).read_text().split() == [str(os.getpid()), "train"]
    assert not lock_path(folder).exists()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny OUT, a one-epoch run on it and its evaluation of val2014."""
    from vqa.config import Config, ModelConfig, TrainConfig
    from vqa.evaluate import evaluate
    from vqa.train import train

    root = tmp_path_factory.mktemp("outputs")
    out, run = write_tiny_out(root / "out"), root / "run"
    config = Config(model=ModelConfig(lstm_units=6, lstm_layers=1, hidden_units=8, fusion_units=8),
                    train=TrainConfig(epochs=1, batch_size=16, early_stopping_patience=0, seed=7))
    train(out, run, config, log=lambda message: None)
    evaluate(run, out, split="val2014", log=lambda message: None)
    return out, run


def test_a_second_train_into_a_run_in_use_stops_and_leaves_its_files(evaluated, holder, capsys):
    from vqa.config import CONFIG_FILE

    out, run = evaluated
    before = _snapshot(run)
    process = holder(run, "train")
    capsys.readouterr()
    # The run's own settings with one more epoch: unlocked, this would resume and rewrite the run.
    code = main(["train", "--data", str(out), "--out", str(run), "--config", str(run / CONFIG_FILE), "--epochs", "2"])
    assert code == 1
    assert _error(capsys) == "error: " + IN_USE.format(folder=run, command="train", pid=process.pid)
    assert _snapshot(run) == before


def test_evaluate_and_preprocess_lock_their_folders(evaluated, holder, tmp_path, capsys):
    from vqa.run_folder import eval_dir

    out, run = evaluated
    folder = eval_dir(run, "val2014")
    before = _snapshot(run)
    process = holder(folder, "evaluate")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(out), "--split", "val2014"]) == 1
    assert _error(capsys) == "error: " + IN_USE.format(folder=folder, command="evaluate", pid=process.pid)
    assert _snapshot(run) == before

    raw, target = tmp_path / "raw", tmp_path / "processed"
    write_official_split(raw, "train2014", three_question_items([1]))
    process = holder(target, "preprocess")
    assert main(["preprocess", "--data-dir", str(raw), "--out", str(target), "--splits", "train2014"]) == 1
    assert _error(capsys) == "error: " + IN_USE.format(folder=target, command="preprocess", pid=process.pid)


# --- output paths that collide ---------------------------------------------------------------------------

def test_score_refuses_per_question_onto_an_input(tmp_path, capsys):
    from vqa.layout import annotations_filename, questions_filename

    write_official_split(tmp_path, "val2014", three_question_items([1]), images=False)
    questions, annotations = tmp_path / questions_filename("val2014"), tmp_path / annotations_filename("val2014")
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"question_id": 1000 + k, "answer": "yes"} for k in range(3)]))
    (tmp_path / "link.json").symlink_to(mine)
    before = _snapshot(tmp_path)
    score = ["score", "--questions", str(questions), "--annotations", str(annotations), "--results", str(mine)]

    assert main(score + ["--per-question", str(mine)]) == 1
    assert _error(capsys) == f"error: --per-question {mine} is also --results; choose another file name."
    assert main(score + ["--per-question", str(tmp_path / "link.json")]) == 1  # the same file by another name
    assert "is also --results" in _error(capsys)
    assert main(score + ["--per-question", str(annotations)]) == 1
    assert _error(capsys) == f"error: --per-question {annotations} is also --annotations; choose another file name."
    assert _snapshot(tmp_path) == before
    assert main(score + ["--per-question", str(tmp_path / "per_question.json")]) == 0


def test_evaluate_refuses_results_onto_its_own_metrics_or_report(evaluated, capsys):
    from vqa.run_folder import eval_metrics_path, report_path

    out, run = evaluated
    before = _snapshot(run)
    for path, what in ((eval_metrics_path(run, "val2014"), "evaluation metrics file"),
                       (report_path(run, "val2014"), "report")):
        capsys.readouterr()
        assert main(["evaluate", "--run", str(run), "--data", str(out), "--results", str(path)]) == 1
        assert _error(capsys) == f"error: --results {path} is also the val2014 {what}; choose another file name."
        assert _snapshot(run) == before


def test_train_and_preprocess_refuse_an_output_folder_that_is_their_input(evaluated, tmp_path, capsys):
    out, run = evaluated
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--data", str(out), "--out", str(out), "--set", "train.epochs=1"]) == 1
    assert _error(capsys) == f"error: --out {out} is also --data; choose another folder."
    assert _snapshot(out) == before

    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", three_question_items([1]))
    raw_before = _snapshot(raw)
    assert main(["preprocess", "--data-dir", str(raw), "--out", str(raw), "--splits", "train2014"]) == 1
    assert _error(capsys) == f"error: --out {raw} is also --data-dir; choose another folder."
    images = tmp_path / "images"
    images.mkdir()
    assert main(["preprocess", "--data-dir", str(raw), "--images", str(images), "--out", str(images)]) == 1
    assert _error(capsys) == f"error: --out {images} is also --images; choose another folder."
    assert _snapshot(raw) == raw_before


# --- unpack never deletes what the user had --------------------------------------------------------------

def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".unpacking")]


def test_unpack_refuses_a_file_entry_named_like_a_folder(tmp_path):
    data, archive = tmp_path / "data", _zip(tmp_path / "val2014.zip", {"new.json": b"{}", "val2014": b"a file"})
    (data / "val2014").mkdir(parents=True)
    (data / "val2014" / "COCO_val2014_000000000001.jpg").write_bytes(b"image")
    before = _snapshot(data)
    with pytest.raises(VQAError) as error:
        unpack(archive, data)
    assert str(error.value) == (f"{archive} holds a file val2014 where {data / 'val2014'} is a folder; move "
                                f"{data / 'val2014'} away and run `vqa download` again (nothing was unpacked).")
    assert _snapshot(data) == before  # the images stay, and nothing of the archive was moved in
    assert _leftovers(data) == []


def test_unpack_refuses_a_nested_collision_and_cleans_up(tmp_path):
    data = tmp_path / "data"
    (data / "val2014" / "sub").mkdir(parents=True)
    (data / "val2014" / "sub" / "mine.jpg").write_bytes(b"mine")
    (data / "notes.txt").write_text("my notes")
    before = _snapshot(data)
    cases = {"file over folder": ({"val2014/sub": b"x"}, "holds a file val2014/sub where"),
             "folder over file": ({"notes.txt/inner": b"x"}, "holds a folder notes.txt where"),
             "other content": ({"val2014/sub/mine.jpg": b"theirs"}, "holds val2014/sub/mine.jpg but")}
    for name, (files, words) in cases.items():
        archive = _zip(tmp_path / "val2014.zip", files)
        with pytest.raises(VQAError, match=words):
            unpack(archive, data)
        assert _snapshot(data) == before, name
        assert _leftovers(data) == [], name


def test_unpack_still_merges_into_existing_folders_and_is_idempotent(tmp_path):
    data = tmp_path / "data"
    (data / "val2014").mkdir(parents=True)
    (data / "val2014" / "old.jpg").write_bytes(b"old")
    archive = _zip(tmp_path / "val2014.zip", {"val2014/new.jpg": b"new", "val2014/deep/a.jpg": b"a", "top.json": b"1"})
    for _ in range(2):
        unpack(archive, data)
        assert _snapshot(data) == {"val2014/old.jpg": b"old", "val2014/new.jpg": b"new",
                                   "val2014/deep/a.jpg": b"a", "top.json": b"1"}
        assert _leftovers(data) == []


def test_download_errors_name_the_command_the_user_ran(tmp_path, capsys):
    assert main(["download", "--out", str(tmp_path), "--base-url", "http://127.0.0.1:9/", "--parts", "val2014.zip"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the "downloading" progress line
    assert line.startswith("error: could not download") and "run `vqa download` again" in line and "make download" not in line
    (tmp_path / "val2014.zip").write_bytes(b"not a zip")
    with pytest.raises(VQAError, match="run `vqa download` again"):
        download(tmp_path, parts=["val2014.zip"], log=lambda message: None)
