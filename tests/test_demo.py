"""make demo's driver, in its quick form: every step runs and leaves its files."""

import json

import pytest

from vqa.demo import accuracy_table, run_demo

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_step(tmp_path, capsys):
    messages = []
    assert run_demo(tmp_path / "demo", runs_dir=tmp_path / "models", quick=True, log=messages.append) == 0

    for run in ("demo", "demo-question-only", "demo-attention", "demo-updown", "demo-mcan"):
        eval_dir = tmp_path / "models" / run / "eval" / "val2014"
        assert {"overall", "perAnswerType"} <= set(json.loads((eval_dir / "metrics.json").read_text()))
    report = (tmp_path / "models" / "demo" / "eval" / "val2014" / "report.html").read_text()
    assert "baseline" in report  # the model's report shows the blind run beside it
    assert (tmp_path / "models" / "demo-attention" / "predict-attention.png").is_file()
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("VQA accuracy (val2014)"))
    assert header.split()[-4:] == ["attention", "mcan", "global", "blind"]
    assert "overall" in table and '"what is the color of the"' in table and '"is the ... bigger than the"' in table
    log = "\n".join(messages)
    assert "$ vqa preprocess" in log and "$ vqa predict" in log and "--attention" in log
    assert f"--regions {tmp_path / 'demo' / 'regions_tsv'} --features auto" in log
    assert "--model updown" in log and "--model mcan" in log
    assert "inside the named object's box" in log
    assert "mcan: the highest-weight box is the named object's" in log and "target 80%" in log
    assert f"make serve RUN={tmp_path / 'models' / 'demo-attention'}" in log
    assert "Stand-ins used" in log and "not a Faster R-CNN detector's" in log  # the demo names its stand-ins
    region_files = sorted((tmp_path / "demo" / "regions_tsv").glob("*.tsv"))
    assert [path.name for path in region_files] == ["train2014_regions.tsv", "val2014_regions.tsv"]
    stamps = [path.stat().st_mtime_ns for path in region_files]
    # A second run reuses the data, backbone, vectors and region features, and the finished runs.
    messages.clear()
    assert run_demo(tmp_path / "demo", runs_dir=tmp_path / "models", quick=True, log=messages.append) == 0
    assert not any("1/10 demo dataset" in m or "stand-in image backbone" in m for m in messages)
    assert [path.stat().st_mtime_ns for path in region_files] == stamps


def test_accuracy_table_has_one_column_per_run_and_the_colour_and_relational_rows():
    attention = {"overall": 90.0, "perAnswerType": {"yes/no": 95.0, "number": 80.0},
                 "perQuestionType": {"what color is the": 99.5, "how many": 80.0, "what is the color of the": 61.0,
                                     "is the ... bigger than the": 70.25}}
    global_ = {"overall": 80.0, "perAnswerType": {"yes/no": 90.0, "number": 70.0},
               "perQuestionType": {"what color is the": 64.25, "how many": 70.0}}
    blind = {"overall": 50.0, "perAnswerType": {"yes/no": 60.0}, "perQuestionType": {"how many": 30.0}}
    lines = accuracy_table({"attention": attention, "global": global_, "blind": blind}).splitlines()
    assert lines[0].split()[-3:] == ["attention", "global", "blind"]
    assert lines[1].split() == ["overall", "90.00", "80.00", "50.00"]
    assert lines[2].split() == ["number", "80.00", "70.00", "nan"]
    assert lines[3].split() == ["yes/no", "95.00", "90.00", "60.00"]
    assert lines[4].split() == ['"what', "color", "is", 'the"', "99.50", "64.25", "nan"]
    assert lines[5].split() == ['"what', "is", "the", "color", "of", 'the"', "61.00", "nan", "nan"]
    assert lines[6].split() == ['"is', "the", "...", "bigger", "than", 'the"', "70.25", "nan", "nan"]
    assert len(lines) == 7 and len({len(line) for line in lines}) == 1  # the columns line up


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
