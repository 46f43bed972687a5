"""`vqa score` through the CLI: official numbers on stdout, one-sentence errors naming the file at fault.

The tiny split has three questions whose accuracies are worked out by hand from the
official rule (min(1, matching humans / 3), averaged over the 10 leave-one-out subsets).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vqa.cli import main

QUESTIONS = [
    {"image_id": 1, "question": "Is there a cat?", "question_id": 1000},
    {"image_id": 1, "question": "How many dogs?", "question_id": 1001},
    {"image_id": 2, "question": "What color is the car?", "question_id": 2000},
]
ANNOTATIONS = [
    {"question_id": 1000, "image_id": 1, "question_type": "is there", "answer_type": "yes/no",
     "multiple_choice_answer": "yes", "answers": ["yes"] * 10},
    {"question_id": 1001, "image_id": 1, "question_type": "how many", "answer_type": "number",
     "multiple_choice_answer": "2", "answers": ["2"] * 2 + ["3"] * 8},
    {"question_id": 2000, "image_id": 2, "question_type": "what color is the", "answer_type": "other",
     "multiple_choice_answer": "red", "answers": ["red"] * 10},
]
# 1000: "yes" against 10 x "yes" -> 100. 1001: "2" against 2 x "2" + 8 x "3": each "2" entry sees 1 other
# match (credit 1/3), each "3" entry sees 2 (2/3), so (2 * 1/3 + 8 * 2/3) / 10 = 0.6 -> 60. 2000: "blue" -> 0.
RESULTS = [{"question_id": 1000, "answer": "yes"}, {"question_id": 1001, "answer": "2"},
           {"question_id": 2000, "answer": "blue"}]


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def split(tmp_path):
    annotations = [dict(a, answers=[{"answer": x, "answer_confidence": "yes", "answer_id": i + 1}
                                    for i, x in enumerate(a["answers"])]) for a in ANNOTATIONS]
    return {
        "questions": _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
                            {"info": {}, "data_subtype": "val2014", "questions": QUESTIONS}),
        "annotations": _write(tmp_path / "v2_mscoco_val2014_annotations.json",
                              {"info": {}, "data_subtype": "val2014", "annotations": annotations}),
        "dir": tmp_path,
    }


def _score(split, results, *extra) -> list[str]:
    path = results if isinstance(results, Path) else _write(split["dir"] / "results.json", results)
    return ["score", "--questions", str(split["questions"]), "--annotations", str(split["annotations"]),
            "--results", str(path), *extra]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err
    return lines[0]


def test_score_prints_one_json_line_with_the_official_numbers(split, capsys, tmp_path):
    per_question = tmp_path / "per_question.json"
    assert main(_score(split, RESULTS, "--per-question", str(per_question))) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "overall": 53.33,  # (100 + 60 + 0) / 3
        "perAnswerType": {"yes/no": 100.0, "number": 60.0, "other": 0.0},
        "perQuestionType": {"is there": 100.0, "how many": 60.0, "what color is the": 0.0},
    }
    assert json.loads(per_question.read_text()) == {"1000": 100.0, "1001": 60.0, "2000": 0.0}


def test_score_in_a_real_process(split):
    result = subprocess.run([sys.executable, "-m", "vqa", *_score(split, list(reversed(RESULTS)))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["overall"] == 53.33


def test_results_missing_and_extra_questions_are_counted_in_one_sentence(split, capsys):
    results = RESULTS[:1] + [{"question_id": 9999, "answer": "yes"}, {"question_id": 9998, "answer": "no"}]
    assert main(_score(split, results)) == 1
    line = _one_error_line(capsys)
    assert "2 missing (1001, 2000)" in line and "2 extra (9999, 9998)" in line
    assert str(split["dir"] / "results.json") in line


def test_results_missing_questions_fail_in_a_real_process_without_traceback(split):
    path = _write(split["dir"] / "short.json", RESULTS[:2])
    result = subprocess.run([sys.executable, "-m", "vqa", *_score(split, path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "1 missing (2000) and 0 extra" in result.stderr


def test_a_question_answered_twice_is_refused(split, capsys):
    assert main(_score(split, RESULTS + [{"question_id": 1001, "answer": "3"}])) == 1
    assert "Question 1001 is answered 2 times" in _one_error_line(capsys)


@pytest.mark.parametrize("answer, kind", [(2, "int"), (None, "NoneType"), (["yes"], "list")])
def test_an_answer_that_is_not_a_string_is_refused(split, capsys, answer, kind):
    results = [dict(RESULTS[0], answer=answer)] + RESULTS[1:]
    assert main(_score(split, results)) == 1
    assert f"The answer for question 1000 is a {kind}, not a string" in _one_error_line(capsys)


@pytest.mark.parametrize("which", ["questions", "annotations", "results"])
def test_a_malformed_json_file_is_named(split, capsys, which):
    broken = split["dir"] / f"broken_{which}.json"
    broken.write_text('[{"question_id": 1000, "answer": "ye')  # cut off mid-write
    args = _score(split, RESULTS)
    args[args.index(f"--{which}") + 1] = str(broken)
    assert main(args) == 1
    line = _one_error_line(capsys)
    assert str(broken) in line and "not valid JSON" in line


def test_a_missing_results_file_is_named(split, capsys):
    assert main(_score(split, split["dir"] / "nowhere.json")) == 1
    assert f"{split['dir'] / 'nowhere.json'} does not exist" in _one_error_line(capsys)


def test_results_that_are_not_a_list_are_refused(split, capsys):
    assert main(_score(split, {"question_id": 1000, "answer": "yes"})) == 1
    assert "must hold a JSON list" in _one_error_line(capsys)
