"""make demo's driver, in its quick form: every step runs and leaves its files."""

import json

import pytest

from vqa.demo import accuracy_table, run_demo

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_step(tmp_path, capsys):
    messages = []
    assert run_demo(tmp_path / "demo", runs_dir=tmp_path / "models", quick=True, log=messages.append) == 0

    for run in ("demo", "demo-question-only"):
        eval_dir = tmp_path / "models" / run / "eval" / "val2014"
        assert {"overall", "perAnswerType"} <= set(json.loads((eval_dir / "metrics.json").read_text()))
    report = (tmp_path / "models" / "demo" / "eval" / "val2014" / "report.html").read_text()
    assert "baseline" in report  # the model's report shows the blind run beside it
    table = capsys.readouterr().out
    assert "VQA accuracy (val2014)" in table and "overall" in table
    log = "\n".join(messages)
    assert "$ vqa preprocess" in log and "$ vqa predict" in log
    assert "Stand-ins used" in log  # the demo names its stand-ins
    # A second run reuses the data, backbone and vectors, and the finished runs.
    messages.clear()
    assert run_demo(tmp_path / "demo", runs_dir=tmp_path / "models", quick=True, log=messages.append) == 0
    assert not any("1/6 demo dataset" in m or "stand-in image backbone" in m for m in messages)


def test_accuracy_table_shows_gain_in_points():
    model = {"overall": 80.0, "perAnswerType": {"yes/no": 90.0, "number": 70.0}}
    blind = {"overall": 50.0, "perAnswerType": {"yes/no": 60.0, "number": 30.0}}
    lines = accuracy_table(model, blind).splitlines()
    assert lines[1].split() == ["overall", "80.00", "50.00", "+30.00"]
    assert lines[2].split() == ["number", "70.00", "30.00", "+40.00"]


def test_the_shipped_preprocessing_configs_are_what_the_code_runs():
    """preprocessing/demo.json is the demo's preprocessing (its default paths); default.json the code defaults."""
    import dataclasses
    from pathlib import Path

    from vqa import config as config_lib
    from vqa.demo import demo_preprocess_settings

    shipped = Path(__file__).resolve().parents[1] / "preprocessing"
    demo = config_lib.resolve(shipped / "demo.json", base=config_lib.PreprocessSettings())
    assert demo == demo_preprocess_settings(Path("demo/raw"), Path("demo/vectors"), Path("demo/stand_in_cnn.keras"))
    default = json.loads((shipped / "default.json").read_text())
    assert default == {"preprocess": dataclasses.asdict(config_lib.PreprocessConfig())}
