"""Robustness (issue #7): bad input, a full disk and killed jobs, as the user meets them on the CLI.

Every user error exits 1 with one sentence naming the file, id or option and what to do
(no traceback); bad usage exits 2; an interrupt exits 130 and says to run the same command
again, which then finishes with exactly what an uninterrupted run writes. The kill tests
run real ``python -m vqa`` processes and kill them mid-run.

Stand-ins: the untrained 8-d ``tiny_backbone`` (.keras) and a spaCy pipeline with
pseudo-random vectors, as in the other tests.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from helpers import write_image, write_official_split
from vqa.cli import main
from vqa.errors import VQAError

from helpers import write_tiny_out

REPO = Path(__file__).resolve().parents[1]
COLORS = ["red", "blue", "green"]
TIMING = {"samples_per_s", "epoch_time_s"}


def _items(num_images: int) -> list[dict]:
    return [{"image_id": i, "question": f"What color is thing {i % 5}?", "answers": [COLORS[i % 3]] * 10}
            for i in range(1, num_images + 1)]


@pytest.fixture(scope="module")
def vectors(vectors_factory) -> str:
    words = ["what", "color", "is", "thing", "?", *(str(i) for i in range(5))]
    return str(vectors_factory(words, name="robust_vectors"))


@pytest.fixture
def raw(tmp_path) -> Path:
    """train2014 with 6 images (one question each) and a 2-question val2014."""
    root = tmp_path / "raw"
    write_official_split(root, "train2014", _items(6))
    write_official_split(root, "val2014", _items(2))
    return root


def _preprocess_args(raw: Path, out: Path, vectors: str, backbone, *extra: str) -> list[str]:
    return ["preprocess", "--data-dir", str(raw), "--out", str(out), "--vectors", vectors,
            "--weights", str(backbone), "--splits", "train2014", *extra]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


QUESTIONS = "v2_OpenEnded_mscoco_train2014_questions.json"
ANNOTATIONS = "v2_mscoco_train2014_annotations.json"


# --- preprocess: data files --------------------------------------------------------------------


def test_missing_data_dir_and_question_file(raw, tmp_path, vectors, tiny_backbone, capsys):
    out = tmp_path / "out"
    code, err = _cli(_preprocess_args(tmp_path / "nowhere", out, vectors, tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err) == (f"error: --data-dir {tmp_path / 'nowhere'} is not a folder; point it at the "
                                "unpacked VQA v2 files.")
    (raw / QUESTIONS).unlink()
    code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err).startswith(f"error: {raw / QUESTIONS} does not exist: put the official VQA v2 "
                                       "question file for train2014 there")
    assert not (out / "preprocess.json").exists()


def test_truncated_and_malformed_json_say_which_file_and_where(raw, tmp_path, vectors, tiny_backbone, capsys):
    out = tmp_path / "out"
    text = (raw / ANNOTATIONS).read_text()
    (raw / ANNOTATIONS).write_text(text[:150])  # a download cut short
    code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone), capsys)
    assert code == 1
    assert re.fullmatch(rf"error: annotations file {re.escape(str(raw / ANNOTATIONS))} is not valid JSON "
                        r"\(line 1, column \d+: .*\); it may be truncated: download or write it again\.",
                        _error_line(err))
    (raw / ANNOTATIONS).write_text(text)

    # One bad entry inside good data is skipped and named (issue #11); a file of nothing else is the wrong file.
    for field, value, expected in (("question_id", "abc", "questions[2]: question_id 'abc' is not an integer"),
                                   ("image_id", None, "question 3000: image_id None is not an integer"),
                                   ("question", 5, "question 3000: question 5 is not a string")):
        original = (raw / QUESTIONS).read_text()
        _edit_json(raw / QUESTIONS, lambda data: data["questions"][2].update({field: value}))
        code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone), capsys)
        assert code == 0, err
        assert f"train2014: 1 bad questions/annotations skipped ({expected}); " in err
        (raw / QUESTIONS).write_text(original)
    _edit_json(raw / QUESTIONS, lambda data: [entry.update(question=5) for entry in data["questions"]])
    code, err = _cli(_preprocess_args(raw, tmp_path / "out2", vectors, tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err) == (f"error: {raw / QUESTIONS}: none of its 6 questions can be used (questions[0]: "
                                "question 5 is not a string); is this an official VQA v2 file?")
    assert not (tmp_path / "out2" / "train2014" / "questions.h5").exists()


def test_questions_and_annotations_that_do_not_match(raw, tmp_path, vectors, tiny_backbone, capsys):
    # An annotation without a question is counted, named and ignored.
    _edit_json(raw / ANNOTATIONS, lambda data: data["annotations"].append(
        dict(data["annotations"][0], question_id=99000)))
    code, err = _cli(_preprocess_args(raw, tmp_path / "out", vectors, tiny_backbone), capsys)
    assert code == 0
    assert "train2014: 1 annotations have no question and were ignored (99000)" in err

    # Questions without an annotation: the two files do not belong together.
    _edit_json(raw / ANNOTATIONS, lambda data: data.update(annotations=data["annotations"][2:]))
    code, err = _cli(_preprocess_args(raw, tmp_path / "out2", vectors, tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err) == (f"error: {raw / ANNOTATIONS} has no annotation for 2 questions of {QUESTIONS} "
                                "(1000, 2000); the two files do not belong together.")


def test_duplicate_question_ids_in_either_file(raw, tmp_path, vectors, tiny_backbone, capsys):
    for name, key in ((QUESTIONS, "questions"), (ANNOTATIONS, "annotations")):
        original = (raw / name).read_text()
        _edit_json(raw / name, lambda data: data[key].append(dict(data[key][1])))
        code, err = _cli(_preprocess_args(raw, tmp_path / "out", vectors, tiny_backbone), capsys)
        assert code == 1
        assert _error_line(err) == (f"error: {raw / name}: 1 question ids appear more than once (2000); "
                                    "the file is corrupt: download it again.")
        (raw / name).write_text(original)


def test_bad_numeric_options(raw, tmp_path, vectors, tiny_backbone, capsys):
    for option, value in (("--limit", "-1"), ("--batch-size", "0"), ("--max-question-length", "0")):
        code, err = _cli(_preprocess_args(raw, tmp_path / "out", vectors, tiny_backbone, option, value), capsys)
        assert code == 1
        assert _error_line(err) == f"error: {option} must be at least {0 if option == '--limit' else 1}, not {value}."


def test_bad_usage_exits_2_and_debug_shows_the_traceback(raw, tmp_path, vectors, tiny_backbone, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(VQAError, match="is not a folder"):
        main(["--debug", *_preprocess_args(tmp_path / "nowhere", tmp_path / "out", vectors, tiny_backbone)])


# --- preprocess: images ------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels: all Pillow needs to see a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_unreadable_images_are_skipped_and_named_odd_ones_converted(tmp_path, vectors, tiny_backbone, capsys):
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", _items(9), images=False)
    folder = raw / "train2014"

    def path(image_id: int) -> Path:
        return folder / f"COCO_train2014_{image_id:012d}.jpg"

    write_image(path(1))
    # 2: missing
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    path(3).write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])  # truncated
    path(4).write_text("<html>404 Not Found</html>")  # not an image
    Image.new("CMYK", (30, 20), (10, 200, 30, 40)).save(path(5), format="JPEG")
    Image.new("L", (30, 20), 128).save(path(6), format="JPEG")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path(7), format="PNG")  # PNG data under a .jpg name
    path(8).write_bytes(_png_header(30000, 30000))  # 900 Mpixel: beyond Pillow's decompression-bomb limit
    write_image(path(9))

    out = tmp_path / "out"
    code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone), capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if "images missing or unreadable" in line)
    assert line.startswith("train2014: 4 images missing or unreadable (2: file does not exist; "
                           "3: corrupt or truncated (")
    assert "4: not an image file; 8: too many pixels (" in line
    assert line.endswith("their 4 questions stay in the text files but are left out of training")
    with h5py.File(out / "train2014" / "image_features.h5") as f:
        assert f["image_ids"][...].tolist() == [1, 5, 6, 7, 9]
        assert np.isfinite(f["features"][...]).all()
    with h5py.File(out / "train2014" / "questions.h5") as f:
        assert f["image_index"][...].tolist() == [0, -1, -1, -1, 1, 2, 3, -1, 4]
    manifest = json.loads((out / "preprocess.json").read_text())
    assert manifest["splits"]["train2014"]["missing_image_ids"] == [2, 3, 4, 8]


# --- preprocess: pipelines and weights ---------------------------------------------------------


def test_unknown_spacy_pipeline_says_how_to_install_it(raw, tmp_path, tiny_backbone, capsys):
    code, err = _cli(_preprocess_args(raw, tmp_path / "out", "en_core_web_xx", tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err) == (
        "error: spaCy pipeline 'en_core_web_xx' is not installed: install it with `python -m spacy download "
        "en_core_web_xx`, or pass --vectors PATH to a pipeline saved with word vectors.")


def test_imagenet_weights_not_downloadable_says_where_to_put_them(raw, tmp_path, vectors, monkeypatch, capsys):
    import keras

    def offline(*args, **kwargs):  # what keras.applications.VGG16 raises when its download fails
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                        "vgg16_weights_tf_dim_ordering_tf_kernels.h5: None -- [Errno -3] Temporary failure in "
                        "name resolution")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    out = tmp_path / "out"
    code, err = _cli(_preprocess_args(raw, out, vectors, "imagenet"), capsys)
    assert code == 1
    assert re.fullmatch(
        r"error: the VGG-16 ImageNet weights are not in Keras's cache and could not be downloaded \(\[Errno -3\] "
        r"Temporary failure in name resolution\): copy vgg16_weights_tf_dim_ordering_tf_kernels\.h5 to "
        r"\S+/models/vgg16_weights_tf_dim_ordering_tf_kernels\.h5 or pass --weights PATH to a VGG-16 weights "
        r"file\.", _error_line(err))
    assert "Loading spaCy" not in err  # it stops before the text steps


def test_backbone_with_a_lambda_layer_is_refused_by_safe_mode(raw, tmp_path, vectors, capsys):
    import keras

    images = keras.Input((32, 32, 3))
    keras.Model(images, keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(images)).save(
        tmp_path / "lambda.keras")
    code, err = _cli(_preprocess_args(raw, tmp_path / "out", vectors, tmp_path / "lambda.keras"), capsys)
    assert code == 1
    assert _error_line(err) == (
        f"error: backbone model {tmp_path / 'lambda.keras'} holds a Lambda layer, which Keras's safe mode does "
        "not load (it could run any code): rebuild the model from built-in or registered layers.")


# Other projects' image-id maps come as pickles (--id-map); this one module reads them, with an unpickler
# that resolves no global, so a pickle's data can come out but none of its code can run.
PLAIN_PICKLE_READER = "id_maps.py"


def test_nothing_is_loaded_with_pickle(tmp_path):
    import pickle

    from vqa.id_maps import read_id_map

    source = {path.name: path.read_text() for path in (REPO / "vqa").glob("*.py")}
    for name, text in source.items():
        uses_pickle = re.search(r"^\s*(import pickle|from pickle import)|\bpickle\.", text, re.MULTILINE)
        assert not uses_pickle or name == PLAIN_PICKLE_READER, name
        assert not re.search(r"pickle\.loads?\(|allow_pickle=True", text), name
        for call in re.findall(r"\b(?:np|numpy)\.load\([^)]*\)", text):  # .npz arrays, never pickled objects
            assert "allow_pickle=False" in call, (name, call)
        assert "safe_mode=False" not in text, name
        for call in re.findall(r"saving\.load_model\([^)]*\)", text):
            assert "safe_mode=True" in call, (name, call)
    assert sum(len(re.findall(r"saving\.load_model\(", text)) for text in source.values()) >= 3

    # The pickle reader runs no code: a pickle that would call a function is refused, and nothing ran.
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(ran),)

    (tmp_path / "map.pkl").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(VQAError, match="map.pkl"):
        read_id_map(tmp_path / "map.pkl")
    assert not ran.exists()


# --- preprocess: a full disk -------------------------------------------------------------------


def _same_h5(one: Path, other: Path) -> bool:
    return one.read_bytes() == other.read_bytes()


def test_disk_full_during_feature_extraction_keeps_nothing_complete_looking(
        raw, tmp_path, vectors, tiny_backbone, monkeypatch, capsys):
    from vqa import extraction

    reference = tmp_path / "reference"
    assert main(_preprocess_args(raw, reference, vectors, tiny_backbone, "--batch-size", "2")) == 0
    capsys.readouterr()

    real_write_rows, calls = extraction._write_rows, []

    def write_rows_until_full(dataset, positions, values):
        calls.append(1)
        if len(calls) == 3:  # the second batch's rows: the first batch is done, its state written
            raise OSError(errno.ENOSPC, "Can't write data (file write failed: ... errno = 28 ...)")
        real_write_rows(dataset, positions, values)

    monkeypatch.setattr(extraction, "_write_rows", write_rows_until_full)
    out = tmp_path / "out"
    code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone, "--batch-size", "2"), capsys)
    assert code == 1
    partial = out / "train2014" / "image_features.h5.partial"
    assert _error_line(err) == (f"error: No space left on device ({partial}): free some space and run the same "
                                "command again to continue where it stopped.")
    assert partial.exists()
    assert not (out / "train2014" / "image_features.h5").exists()
    assert not (out / "train2014" / "questions.h5").exists()
    assert "train2014" not in json.loads((out / "preprocess.json").read_text())["splits"]
    assert not [p.name for p in out.rglob(".*tmp*")]

    monkeypatch.setattr(extraction, "_write_rows", real_write_rows)
    code, err = _cli(_preprocess_args(raw, out, vectors, tiny_backbone, "--batch-size", "2"), capsys)
    assert code == 0, err
    assert not partial.exists()
    for name in ("image_features.h5", "questions.h5"):
        assert _same_h5(out / "train2014" / name, reference / "train2014" / name), name


def _h5_readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
        return True
    except Exception:
        return False


def test_a_second_process_on_the_same_extraction_stops_at_once(raw, tmp_path, vectors, tiny_backbone, capsys):
    import fcntl

    partial = tmp_path / "out" / "train2014" / "image_features.h5.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"rows being written")
    with partial.open("rb+") as held:  # as the first process holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, err = _cli(_preprocess_args(raw, tmp_path / "out", vectors, tiny_backbone), capsys)
    assert code == 1
    assert _error_line(err) == (f"error: another process is writing {partial}; wait for it to finish or stop it "
                                "before extracting again.")
    assert partial.read_bytes() == b"rows being written"


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_failures_while_hdf5_closes_a_file_keep_their_meaning(tmp_path, monkeypatch, failure):
    """h5py cannot pass on an exception from a write made while closing: Ctrl-C and a full disk
    there used to surface as RuntimeError/AttributeError tracebacks."""
    from vqa import storage

    writes = {"count": 0, "fail_at": None}

    class FailingFile(io.FileIO):
        def write(self, data):
            writes["count"] += 1
            if writes["count"] == writes["fail_at"]:
                raise failure
            return super().write(data)

    monkeypatch.setattr(storage, "open", lambda path, mode, buffering: FailingFile(path, mode), raising=False)
    with pytest.raises(type(failure)):
        with storage.atomic_path(tmp_path / "file.h5") as tmp, storage.open_h5(tmp, "w") as f:
            f.create_dataset("x", data=np.zeros((100, 10)))
            writes["fail_at"] = writes["count"] + 2  # a write made by close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_disk_full_on_a_real_tiny_filesystem(raw, tmp_path, vectors, tiny_backbone, capsys):
    """A 512 KiB tmpfs filled to leave 8..136 KiB, so the disk fills at each step of preprocess in turn.

    Through HDF5's own file driver a full disk made h5py segfault. Needs root (mount).
    """
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    out, ballast = mount_point / "out", mount_point / "ballast"
    args = _preprocess_args(raw, out, vectors, tiny_backbone, "--batch-size", "2")
    reference = tmp_path / "reference"
    assert main(_preprocess_args(raw, reference, vectors, tiny_backbone, "--batch-size", "2")) == 0
    failures = 0
    try:
        for free_kib in range(8, 137, 16):
            shutil.rmtree(out, ignore_errors=True)
            stat = os.statvfs(mount_point)
            ballast.write_bytes(bytes(max(0, stat.f_bavail * stat.f_frsize - free_kib * 1024)))
            capsys.readouterr()
            code, err = _cli(args, capsys)
            if code == 1:
                failures += 1
                assert re.fullmatch(r"error: No space left on device \(\S+\): free some space and run the same "
                                    r"command again to continue where it stopped\.", _error_line(err)), free_kib
                # Whatever stands under its final name is complete; the split is not listed as done.
                files = [path for path in out.rglob("*") if path.is_file()]
                assert not [path.name for path in files if path.name.startswith(".")], free_kib
                assert all(_h5_readable(path) for path in files if path.suffix == ".h5"), free_kib
                manifest = out / "preprocess.json"
                assert not manifest.exists() or "train2014" not in json.loads(manifest.read_text())["splits"]
            else:
                assert code == 0, err
            ballast.unlink()
            assert main(args) == 0, free_kib
            for name in ("image_features.h5", "questions.h5"):
                assert (out / "train2014" / name).read_bytes() == (reference / "train2014" / name).read_bytes()
        assert failures >= 5
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


# --- train: the wrong directory ----------------------------------------------------------------

TRAIN_TINY = ["--set", "model.lstm_units=6", "--set", "model.hidden_units=12", "--set", "model.fusion_units=12",
              "--set", "train.early_stopping_patience=0", "--seed", "7"]


def test_train_on_a_directory_that_is_not_what_it_needs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _cli(["train", "--data", str(empty), "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert _error_line(err) == (f"error: {empty} is not a preprocessed directory (no preprocess.json): "
                                "run `vqa preprocess` to make it.")

    old = write_tiny_out(tmp_path / "old")
    _edit_json(old / "preprocess.json", lambda data: data.update(format_version=0))
    code, err = _cli(["train", "--data", str(old), "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert _error_line(err) == (f"error: {old / 'preprocess.json'} has format version 0, this vqa reads version 1: "
                                f"run `vqa preprocess` again into {old.resolve()}.")


def test_train_refuses_a_run_from_an_older_format(tmp_path, capsys):
    out = write_tiny_out(tmp_path / "out")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.keras"
    checkpoint.parent.mkdir(parents=True)
    with zipfile.ZipFile(checkpoint, "w") as archive:  # what an older vqa left: its state says format 0
        archive.writestr("vqa_state.json", json.dumps({"format_version": 0, "epoch": 1}))
    code, err = _cli(["train", "--data", str(out), "--out", str(tmp_path / "run"), "--epochs", "2"], capsys)
    assert code == 1
    assert _error_line(err) == (
        f"error: checkpoint {checkpoint} was written by another version of vqa (run format 0, this one writes 1): "
        "train into a new run directory, or pass --restart to start this one over.")


# --- killed jobs (real processes) --------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "VQA_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python(script: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _vqa(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vqa", *args], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def _kill_when(process: subprocess.Popen, ready, sig: int, timeout: float = 120) -> None:
    """Send ``sig`` once ``ready()`` holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the process finished before it could be interrupted"
        assert time.monotonic() < deadline, "no progress to interrupt"
        time.sleep(0.02)
    process.send_signal(sig)


def _rows_done(partial: Path) -> int:
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(np.count_nonzero(f["state"][...]))
    except (OSError, KeyError):
        return 0


def _assert_interrupted_politely(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=60) == 130
    err = log.read_text()
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted: run the same command again to continue where it stopped."


@pytest.mark.slow
@pytest.mark.heavy
def test_killed_preprocess_finishes_with_the_uninterrupted_files(tmp_path, vectors, tiny_backbone, capsys):
    """SIGKILL, then SIGINT, mid feature extraction; the third run gives the same files as one run."""
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", _items(240))
    args = _preprocess_args(raw, tmp_path / "out", vectors, tiny_backbone, "--batch-size", "1")
    partial = tmp_path / "out" / "train2014" / "image_features.h5.partial"

    killed = _vqa(args, tmp_path / "killed.log")
    _kill_when(killed, lambda: _rows_done(partial) >= 30, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "out" / "train2014" / "image_features.h5").exists()

    interrupted = _vqa(args, tmp_path / "interrupted.log")
    done_before = _rows_done(partial)
    _kill_when(interrupted, lambda: _rows_done(partial) >= done_before + 30, signal.SIGINT)
    _assert_interrupted_politely(interrupted, tmp_path / "interrupted.log")
    manifest = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert "train2014" not in manifest["splits"]  # listed only once complete

    finished = subprocess.run([sys.executable, "-m", "vqa", *args], env=_env(), cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming feature extraction" in finished.stderr

    reference = tmp_path / "reference"
    assert main(_preprocess_args(raw, reference, vectors, tiny_backbone, "--batch-size", "1")) == 0
    for name in ("image_features.h5", "questions.h5", "questions.txt", "answers.txt"):
        assert (tmp_path / "out" / "train2014" / name).read_bytes() == (reference / "train2014" / name).read_bytes()
    for name in ("vocab.json", "answers.json", "embeddings.h5", "backbone.json"):
        assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes()
    assert not partial.exists()


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _epochs_done(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.heavy
def test_killed_training_finishes_with_the_uninterrupted_weights(tmp_path):
    """SIGKILL after epoch 1 (mid-epoch or mid-checkpoint); the next run ends where one uninterrupted run ends."""
    from vqa.registry import load_model

    out = write_tiny_out(tmp_path / "out")

    def args(run: Path) -> list[str]:  # the bag-of-words model: quick to build, with dropout to resume
        return ["train", "--data", str(out), "--out", str(run), "--epochs", "10", "--model", "bow-mlp",
                *TRAIN_TINY, "--set", "train.batch_size=2"]

    run, reference = tmp_path / "run", tmp_path / "reference"
    killed = _vqa(args(run), tmp_path / "killed.log")
    _kill_when(killed, lambda: _epochs_done(run) >= 1, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((run / "run.json").read_text())["completed"] is False

    # The same command again, then the uninterrupted run, in one fresh process: both start
    # TensorFlow the way `python -m vqa` does (this pytest process started it otherwise).
    finished = _python(f"""
        import sys
        from vqa.cli import main
        sys.exit(main({args(run)!r}) or main({args(reference)!r}))
    """, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming {run} after epoch" in finished.stderr

    for name in ("model.keras", "checkpoints/last.keras"):
        mine, theirs = load_model(run / name).get_weights(), load_model(reference / name).get_weights()
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a, b)
    assert _history(run) == _history(reference)

    def untimed(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}

    assert untimed(run / "metrics.json") == untimed(reference / "metrics.json")
    assert json.loads((run / "run.json").read_text()) == json.loads((reference / "run.json").read_text())
    assert json.loads((run / "checkpoints" / "state.json").read_text())["completed"] is True


# Heavy: alone it passes (3 of 3 runs), but inside the whole suite on an idle machine the run finished
# before the SIGINT raised, twice in a row (exit 0); the resume half is also covered by test_train's
# killed-run test. make test-all runs it.
@pytest.mark.slow
@pytest.mark.heavy
def test_interrupted_training_exits_130_and_continues_to_the_same_weights(tmp_path, capsys):
    """A real SIGINT (Ctrl-C) in this process after epoch 1; the re-run matches an uninterrupted run."""
    import threading

    from vqa.registry import load_model

    # 640 questions in batches of 32 (train.min_batches): an epoch is long enough that the run cannot
    # finish its last epochs between the first checkpoint and the signal.
    out = write_tiny_out(tmp_path / "out", train_questions=640)

    def args(run: Path) -> list[str]:
        return ["train", "--data", str(out), "--out", str(run), "--epochs", "4", "--model", "bow-mlp", *TRAIN_TINY]

    run = tmp_path / "run"
    stop = threading.Event()

    def press_ctrl_c() -> None:
        while not stop.is_set() and _epochs_done(run) < 1:
            time.sleep(0.01)
        if not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=press_ctrl_c, daemon=True)
    watcher.start()
    try:
        code, err = _cli(args(run), capsys)
    finally:
        stop.set()
        watcher.join()
    assert code == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted: run the same command again to continue where it stopped."
    assert 1 <= _epochs_done(run) < 4
    assert not [p.name for p in run.rglob(".*tmp*")]

    assert main(args(run)) == 0
    assert main(args(tmp_path / "reference")) == 0
    for a, b in zip(load_model(run / "model.keras").get_weights(),
                    load_model(tmp_path / "reference" / "model.keras").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _history(run) == _history(tmp_path / "reference")

    # Killed after the last checkpoint but before the final files: the re-run writes them.
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    _edit_json(run / "run.json", lambda data: data.update(completed=False))
    assert main(args(run)) == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert json.loads((run / "run.json").read_text())["completed"] is True
