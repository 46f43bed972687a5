"""Outputs never land inside inputs (issue #21): an output folder inside an input folder, or holding one,
is refused through the CLI before anything is written, while side-by-side folders stay accepted."""

from __future__ import annotations

from pathlib import Path

from helpers import three_question_items, write_official_split, write_tiny_out
from vqa.cli import main
from vqa.paths import check_outputs


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_train_refuses_a_run_inside_or_around_the_preprocessed_folder(tmp_path, capsys):
    out = write_tiny_out(tmp_path / "data" / "processed")
    before = _files(tmp_path)
    inside = out / "train2014"
    assert main(["train", "--data", str(out), "--out", str(inside), "--set", "train.epochs=1"]) == 1
    assert _error(capsys) == f"error: --out {inside} is inside --data {out}; choose a folder outside it."
    around = tmp_path / "data"
    assert main(["train", "--data", str(out), "--out", str(around), "--set", "train.epochs=1"]) == 1
    assert _error(capsys) == (f"error: --out {around} holds --data {out}; "
                              "choose a folder that does not hold it.")
    assert _files(tmp_path) == before


def test_preprocess_refuses_an_out_inside_the_image_folder(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", three_question_items([1]))
    before = _files(raw)
    out = raw / "train2014" / "x"
    assert main(["preprocess", "--data-dir", str(raw), "--out", str(out), "--splits", "train2014"]) == 1
    assert _error(capsys) == f"error: --out {out} is inside --data-dir {raw}; choose a folder outside it."
    images = tmp_path / "images"
    (images / "train2014").mkdir(parents=True)
    out = images / "train2014" / "x"
    assert main(["preprocess", "--data-dir", str(raw), "--images", str(images), "--out", str(out),
                 "--splits", "train2014"]) == 1
    assert _error(capsys) == f"error: --out {out} is inside --images {images}; choose a folder outside it."
    assert _files(raw) == before and _files(images) == ["train2014"]


def test_folders_side_by_side_and_files_beside_inputs_are_accepted(tmp_path):
    data, run = tmp_path / "data" / "processed", tmp_path / "models" / "baseline"
    data.mkdir(parents=True)
    check_outputs({"--data": data}, {"--out": run})
    check_outputs({"--data": data}, {"--out": tmp_path / "data" / "processed-run"})  # a shared prefix is not inside
    results = tmp_path / "results.json"
    results.write_text("[]")
    check_outputs({"--results": results}, {"--per-question": tmp_path / "per_question.json"})
