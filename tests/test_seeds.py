"""The seed-variance report: `vqa train ... --seeds N` (vqa.seeds)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from vqa import seeds
from vqa.cli import main
from vqa.config import Config
from vqa.errors import VQAError

from helpers import write_tiny_out

TINY = {"model": {"lstm_units": 6, "lstm_layers": 1, "hidden_units": 12, "fusion_units": 12, "dropout": 0.3},
        "train": {"batch_size": 16, "learning_rate": 0.02, "early_stopping_patience": 0}}


def test_summary_by_hand():
    per_seed = {0: {"val_vqa_accuracy": 50.0, "val_vqa_accuracy_yes_no": 70.0, "train_loss": 0.3},
                1: {"val_vqa_accuracy": 54.0, "val_vqa_accuracy_yes_no": 70.0, "train_loss": 0.2},
                2: {"val_vqa_accuracy": 55.0, "val_vqa_accuracy_yes_no": 73.0, "train_loss": 0.1}}
    summary = seeds.summarise(per_seed)
    assert list(summary) == ["val_vqa_accuracy", "val_vqa_accuracy_yes_no"]  # scores only, not the loss
    # mean 53, sample variance ((-3)^2 + 1^2 + 2^2) / 2 = 7
    assert summary["val_vqa_accuracy"] == {"mean": 53.0, "std": round(7 ** 0.5, 2), "min": 50.0, "max": 55.0,
                                           "values": [50.0, 54.0, 55.0]}
    assert summary["val_vqa_accuracy_yes_no"]["mean"] == 71.0 and summary["val_vqa_accuracy_yes_no"]["std"] == 1.73
    lines = seeds.report_lines(summary, 3)
    assert lines[0].split() == ["val_vqa_accuracy", "53.00", "±", "2.65", "(min", "50.00,", "max", "55.00,", "3",
                                "seeds)"]


def test_fewer_than_two_seeds_is_refused(tmp_path):
    with pytest.raises(VQAError, match="--seeds must be at least 2 to measure a spread, not 1"):
        seeds.train_seeds(tmp_path, tmp_path / "run", Config(), 1)


@pytest.mark.slow
def test_vqa_train_seeds_trains_each_seed_and_reports_mean_and_std(tmp_path, capsys):
    out = write_tiny_out(tmp_path / "out")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "runs"
    assert main(["train", "--data", str(out), "--out", str(run), "--config", str(config), "--epochs", "1",
                 "--seed", "5", "--seeds", "3"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert json.loads((run / "seeds.json").read_text(encoding="utf-8")) == printed
    assert printed["seeds"] == [5, 6, 7]
    assert printed["runs"] == [str(run / f"seed-{seed}") for seed in (5, 6, 7)]

    finals = [json.loads((run / f"seed-{seed}" / "metrics.json").read_text()) for seed in (5, 6, 7)]
    assert [json.loads((run / f"seed-{seed}" / "config.json").read_text())["train"]["seed"]
            for seed in (5, 6, 7)] == [5, 6, 7]
    names = {"val_vqa_accuracy", "val_vqa_accuracy_other", "val_vqa_accuracy_yes_no"}
    assert set(printed["scores"]) == names
    for name in names:
        values = [final[name] for final in finals]
        item = printed["scores"][name]
        assert item["values"] == values
        assert item["mean"] == pytest.approx(statistics.mean(values), abs=0.005)
        assert item["std"] == pytest.approx(statistics.stdev(values), abs=0.005)
        line = next(line for line in captured.err.splitlines() if line.startswith(name + " "))
        assert f"{item['mean']:.2f} ± {item['std']:.2f}" in line and "3 seeds" in line

    # Re-running continues: every seed is complete, so nothing trains and the report is the same.
    assert main(["train", "--data", str(out), "--out", str(run), "--config", str(config), "--epochs", "1",
                 "--seed", "5", "--seeds", "3"]) == 0
    again = capsys.readouterr()
    assert json.loads(again.out) == printed and again.err.count("nothing to do") == 3
    assert seeds.read_seeds_report(run) == printed


def test_seed_folders_are_named_by_seed(tmp_path):
    assert seeds.seed_run_dir(tmp_path, 12) == Path(tmp_path) / "seed-12"
