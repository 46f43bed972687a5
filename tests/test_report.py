"""report.html: self-contained, bars beside a baseline, answer confusion, a gallery; rendered by headless Chromium.

No model is trained here: the report is written from hand-made answer scores on a tiny
preprocessed split, so every bar, cell and card on the page is known in advance.
val2014 has 3 images x 3 questions; the file of image 7 is deleted (its questions show
"not available"). The browser test needs Debian's chromium (`apt-get install chromium`;
.ci/run installs it) and skips when it is absent.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from helpers import THREE_QUESTIONS as QUESTIONS
from helpers import three_question_items as _items
from helpers import write_official_split
from vqa import metric
from vqa.report import BAR_WIDTH, write_report

# What the "model" answers for images 5, 6 and 7 (three questions each, in QUESTIONS order).
PREDICTED = ["yes", "2", "red", "2", "yes", "red", "yes", "yes", "yes"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_backbone, vectors_factory):
    from helpers import preprocess

    root = tmp_path_factory.mktemp("report")
    raw, out = root / "raw", root / "processed"
    write_official_split(raw, "train2014", _items([1, 2]))
    write_official_split(raw, "val2014", _items([5, 6, 7]))
    (raw / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    write_official_split(raw, "test-dev2015", _items([8]), annotated=False)
    words = {word for question, _, _ in QUESTIONS for word in question.split()}
    preprocess(raw, out, ["train2014", "val2014", "test-dev2015"], vectors=str(vectors_factory(words)),
               weights=str(tiny_backbone), log=lambda message: None)
    answers = json.loads((out / "answers.json").read_text())["answers"]
    annotations = json.loads((raw / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    return {"root": root, "raw": raw, "out": out, "answers": answers, "annotations": annotations}


def _scores(answers, predicted):
    """Scores (N, K): 0.9 for the predicted answer, then 0.5, 0.1, ... for the others in vocabulary order."""
    scores = np.zeros((len(predicted), len(answers)), np.float32)
    for row, answer in enumerate(predicted):
        others = [i for i in range(len(answers)) if answers[i] != answer]
        scores[row, answers.index(answer)] = 0.9
        scores[row, others] = np.linspace(0.5, 0.1, len(others))
    return scores


@pytest.fixture(scope="module")
def report(data):
    """The val2014 report of PREDICTED, with a baseline run that says "yes" to everything."""
    question_ids = np.array([a["question_id"] for a in data["annotations"]], np.int64)
    results = [{"question_id": int(q), "answer": a} for q, a in zip(question_ids, PREDICTED)]
    scored = metric.score(data["annotations"], results)
    metrics = scored.to_json() | {"num_questions": 9, "questions_without_image": 3}
    blind = metric.score(data["annotations"], [{"question_id": int(q), "answer": "yes"} for q in question_ids])
    baseline = data["root"] / "runs" / "blind" / "eval" / "val2014" / "metrics.json"
    baseline.parent.mkdir(parents=True)
    baseline.write_text(json.dumps(blind.to_json() | {"num_questions": 9}))
    path = write_report(data["root"] / "runs" / "tiny" / "eval" / "val2014" / "report.html",
                        run_dir=data["root"] / "runs" / "tiny", data_dir=data["out"], split="val2014",
                        scores=_scores(data["answers"], PREDICTED), question_ids=question_ids,
                        answers=data["answers"], metrics=metrics, per_question=scored.per_question,
                        annotations=data["annotations"], baseline=baseline)
    return {"path": path, "page": path.read_text(encoding="utf-8"), "metrics": metrics, "baseline": blind.to_json(),
            "per_question": scored.per_question}


def _section(page, section_id):
    return re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S).group(1)


def test_the_page_is_self_contained(report):
    page = report["page"]
    assert page.startswith("<!doctype html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 6  # images 5 and 6, three questions each
    assert all(source.startswith("data:image/jpeg;base64,") for source in sources)


def test_answer_type_bars_stand_beside_the_baseline(report):
    section = _section(report["page"], "answer-types")
    model_widths = [float(w) for w in re.findall(r'class="bar model" style="width:([\d.]+)px"', section)]
    base_widths = [float(w) for w in re.findall(r'class="bar base" style="width:([\d.]+)px"', section)]
    labels = re.findall(r'<td class="label">([^<]*)</td>', section)
    assert sorted(labels) == ["number", "other", "yes/no"]
    assert model_widths == pytest.approx([BAR_WIDTH * report["metrics"]["perAnswerType"][label] / 100
                                          for label in labels], abs=0.05)
    assert base_widths == pytest.approx([BAR_WIDTH * report["baseline"]["perAnswerType"][label] / 100
                                         for label in labels], abs=0.05)
    assert "baseline blind" in section and "n=3" in section


def test_question_type_bars_cover_every_question_type(report):
    section = _section(report["page"], "question-types")
    assert sorted(re.findall(r'<td class="label">([^<]*)</td>', section)) == ["how many", "is there", "what color"]
    assert section.count('class="bar model"') == section.count('class="bar base"') == 3


def test_confusion_counts_true_against_predicted_answers(report):
    section = _section(report["page"], "confusion")
    header = re.findall(r"<th>([^<]*)</th>", section.split("</tr>")[0])
    rows = {re.search(r"<th>([^<]*)</th>", row).group(1): [int(c or 0) for c in re.findall(r"<td[^>]*>(\d*)</td>", row)]
            for row in section.split("</tr>")[1:] if "<td" in row}
    counts = {(truth, predicted): rows[truth][header.index(predicted)] for truth in rows for predicted in header}
    # Multiple-choice answers: yes, 2, red for images 5, 6, 7; PREDICTED says what came out.
    assert counts[("yes", "yes")] == 2 and counts[("yes", "2")] == 1
    assert counts[("2", "2")] == 1 and counts[("2", "yes")] == 2
    assert counts[("red", "red")] == 2 and counts[("red", "yes")] == 1
    assert sum(sum(row) for row in rows.values()) == 9


def test_gallery_cards_show_answers_humans_and_verdicts(report, data):
    section = _section(report["page"], "gallery")
    cards = section.split('<div class="card ')[1:]
    assert len(cards) == 9
    for card, annotation, predicted in zip(cards, data["annotations"], PREDICTED):
        accuracy = report["per_question"][annotation["question_id"]]
        verdict = "right" if accuracy == 100 else "partly" if accuracy > 0 else "wrong"
        assert card.startswith(f'{verdict}"')
        top = re.findall(r"<li>([^<]*) <span>([\d.]+)</span></li>", card)
        assert len(top) == 3 and top[0] == (predicted, "0.90")
        humans = re.search(r'humans: ([^<]*)</p>', card).group(1).split(", ")
        assert humans == [a["answer"] for a in annotation["answers"]] and len(humans) == 10
    assert all("image 7 not available" in card for card in cards[6:])
    assert all("<img" in card for card in cards[:6])


def test_a_split_without_annotations_has_a_gallery_but_no_accuracy(data, tmp_path):
    question_ids = np.array([8000, 8001, 8002], np.int64)
    path = write_report(tmp_path / "report.html", run_dir=tmp_path / "tiny", data_dir=data["out"],
                        split="test-dev2015", scores=_scores(data["answers"], ["yes", "2", "red"]),
                        question_ids=question_ids, answers=data["answers"],
                        metrics={"num_questions": 3, "questions_without_image": 0}, per_question=None)
    page = path.read_text(encoding="utf-8")
    assert 'class="bar' not in page and 'id="confusion"' not in page and "has no annotations" in page
    assert page.count('<div class="card ">') == 3 and "humans:" not in page and 'class="verdict"' not in page


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does this)")
    return chromium


def _headless(chromium, tmp_path, *args) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # two browser starts: ~5-10 s
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    chromium = _chromium()
    url = report["path"].resolve().as_uri()
    dom = _headless(chromium, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="bar model"') == 6 and dom.stdout.count('class="bar base"') == 6
    assert dom.stdout.count('<div class="card ') == 9
    assert 'id="confusion"' in dom.stdout

    screenshot = tmp_path / "report.png"
    shot = _headless(chromium, tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", url)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50  # text, bars and photos, not a blank page

    def share(rgb):
        return float(np.mean(np.all(np.abs(pixels.astype(int) - rgb) <= 8, axis=1)))

    assert share((0x38, 0x69, 0xb3)) > 0.0005  # this run's bars are drawn
    assert share((0xd4, 0xa7, 0x2c)) > 0.0005  # and the baseline's beside them
    assert share((0x2e, 0x8b, 0x57)) > 0.0001  # a card marked right
    assert share((0xc0, 0x39, 0x2b)) > 0.0001  # a card marked wrong
