"""RUN/eval/<split>/report.html: one self-contained page about an evaluation.

Bar charts of accuracy per answer type and per question type (beside a baseline run,
e.g. question-only, when ``--baseline`` names one), the confusion among the most
frequent answers, and a gallery of examples with the image, the top-3 answers with
their scores, the 10 human answers and whether the model was right. Images are
embedded as small JPEG thumbnails, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from vqa.storage import read_lines, write_text

GALLERY_SIZE = 24
CONFUSION_ANSWERS = 12
THUMBNAIL = 160

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
.bars td{padding:2px 6px;font-size:.9em;white-space:nowrap}
.bar{height:12px;display:inline-block;vertical-align:middle}
.model{background:#3869b3}.base{background:#c7a13a}
table.confusion{border-collapse:collapse;font-size:.8em}
table.confusion td,table.confusion th{border:1px solid #ddd;padding:3px 5px;text-align:right}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{width:230px;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:.85em}
.card img{width:100%;border-radius:4px}
.right{border-left:5px solid #2e8b57}.wrong{border-left:5px solid #c0392b}
.muted{color:#777}
"""


def _thumbnail(path: Path) -> str | None:
    """A data: URI of a small JPEG of ``path``, or None when the image cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL * 2, THUMBNAIL * 2))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(title: str, model: dict, baseline: dict | None, labels: list[str] | None = None) -> str:
    labels = labels or sorted(model)
    rows = []
    for label in labels:
        value = model.get(label, 0.0)
        cells = [f"<td>{html.escape(label)}</td>",
                 f'<td><span class="bar model" style="width:{2.5 * value:.1f}px"></span> {value:.2f}</td>']
        if baseline is not None:
            base = baseline.get(label)
            cells.append(
                f'<td><span class="bar base" style="width:{2.5 * (base or 0):.1f}px"></span> '
                f'{"-" if base is None else f"{base:.2f}"}</td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr><th></th><th>this run</th>" + ("<th>baseline</th>" if baseline is not None else "") + "</tr>"
    return f"<h2>{html.escape(title)}</h2><table class='bars'>{header}{''.join(rows)}</table>"


def _confusion(predicted: list[str], truth: list[str]) -> str:
    """Counts of (multiple-choice answer, predicted answer) over the most frequent true answers."""
    labelled = [(t, p) for t, p in zip(truth, predicted) if t]
    if not labelled:
        return ""
    values, counts = np.unique([t for t, _ in labelled], return_counts=True)
    top = [str(v) for v in values[np.argsort(-counts, kind="stable")][:CONFUSION_ANSWERS]]
    index = {answer: i for i, answer in enumerate(top)}
    table = np.zeros((len(top), len(top) + 1), int)
    for t, p in labelled:
        if t in index:
            table[index[t], index.get(p, len(top))] += 1
    head = "".join(f"<th>{html.escape(a)}</th>" for a in top) + "<th>other</th>"
    body = "".join(
        f"<tr><th>{html.escape(a)}</th>" + "".join(f"<td>{c or ''}</td>" for c in table[i]) + "</tr>"
        for i, a in enumerate(top)
    )
    return ("<h2>Answer confusion (rows: multiple-choice answer, columns: predicted)</h2>"
            f"<table class='confusion'><tr><th></th>{head}</tr>{body}</table>")


def write_report(path: Path, *, run_dir: Path, data_dir: Path, split: str, scores: np.ndarray,
                 question_ids: np.ndarray, answers: list[str], metrics: dict, per_question: dict | None,
                 baseline: str | Path | None = None) -> Path:
    """Write the report for one evaluation; returns its path."""
    from vqa.preprocess import image_path, load_manifest

    manifest = load_manifest(data_dir)
    entry = manifest["splits"][split]
    split_dir = Path(data_dir) / split
    questions = read_lines(split_dir / "questions.txt")
    image_ids = [int(i) for i in read_lines(split_dir / "image_ids.txt")]
    truth = read_lines(split_dir / "answers.txt")
    human: dict[int, list[str]] = {}
    if entry.get("annotations_file") and Path(entry["annotations_file"]).exists():
        annotations = json.loads(Path(entry["annotations_file"]).read_text(encoding="utf-8"))["annotations"]
        wanted = {int(q) for q in question_ids}
        human = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations
                 if a["question_id"] in wanted}

    baseline_metrics = None
    if baseline:
        baseline_path = Path(baseline) / "eval" / split / "metrics.json"
        if baseline_path.exists():
            baseline_metrics = json.loads(baseline_path.read_text(encoding="utf-8"))

    order = np.argsort(-scores, axis=1, kind="stable")[:, :3] if len(scores) else np.zeros((0, 3), int)
    predicted = [answers[row[0]] for row in order]
    parts = [f"<h1>VQA evaluation: {html.escape(Path(run_dir).name)} on {html.escape(split)}</h1>"]
    if "overall" in metrics:
        line = f"Overall VQA accuracy <b>{metrics['overall']:.2f}</b>"
        if baseline_metrics and "overall" in baseline_metrics:
            line += f" (baseline {html.escape(Path(baseline).name)}: {baseline_metrics['overall']:.2f})"
        parts.append(f"<p>{line} over {len(question_ids)} questions (official metric).</p>")
        parts.append(_bars("Accuracy per answer type", metrics["perAnswerType"],
                           baseline_metrics.get("perAnswerType") if baseline_metrics else None))
        parts.append(_bars("Accuracy per question type", metrics["perQuestionType"],
                           baseline_metrics.get("perQuestionType") if baseline_metrics else None))
        parts.append(_confusion(predicted, truth[: len(predicted)]))
    else:
        parts.append(f"<p>{len(question_ids)} questions answered; {html.escape(split)} has no annotations.</p>")

    images_dir = Path(entry.get("images_dir", data_dir))
    step = max(1, len(question_ids) // GALLERY_SIZE)
    cards = []
    for row in list(range(0, len(question_ids), step))[:GALLERY_SIZE]:
        qid = int(question_ids[row])
        thumbnail = _thumbnail(image_path(images_dir, split, image_ids[row]))
        image_html = f'<img src="{thumbnail}" alt="image {image_ids[row]}">' if thumbnail else \
            f'<p class="muted">image {image_ids[row]} not available</p>'
        top = "".join(f"<li>{html.escape(answers[i])} <span class='muted'>{scores[row, i]:.2f}</span></li>"
                      for i in order[row])
        accuracy = per_question.get(qid) if per_question else None
        verdict = "" if accuracy is None else ("right" if accuracy > 0 else "wrong")
        humans = ", ".join(html.escape(a) for a in human.get(qid, []))
        cards.append(
            f'<div class="card {verdict}">{image_html}<p><b>{html.escape(questions[row])}</b></p><ol>{top}</ol>'
            + (f"<p class='muted'>humans: {humans}</p>" if humans else "")
            + (f"<p>accuracy {accuracy:.1f}</p>" if accuracy is not None else "") + "</div>"
        )
    parts.append(f"<h2>Examples</h2><div class='gallery'>{''.join(cards)}</div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>VQA report {html.escape(split)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    write_text(path, page)
    return path
