"""The HTML report of an evaluation (``vqa.run_folder.report_path``): one self-contained page.

Horizontal bar charts of accuracy per answer type and per question type (beside a
baseline run, e.g. question-only, when ``vqa evaluate --baseline`` names one), the
confusion among the most frequent answers, and a gallery of examples with the image,
the question, the top-3 answers with their scores, the 10 human answers and whether
the model was right; for an attention run, each example's attention maps drawn over its
image, one panel per glimpse or hop, beside it: heatmaps over a grid (``vqa.heatmap``), boxes
over detector regions (``vqa.box_drawing``; without the image file, on a grey canvas of the
size the region file records, the boxes in place). Images are embedded as
small JPEG thumbnails and the styling is inline, so the file references nothing outside
itself: it can be mailed or archived alone and opens offline.

Reads the split's text columns (``vqa.split_files``) and images (where the manifest,
``vqa.manifest``, says they are); everything else comes from ``vqa.evaluate``.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vqa.box_drawing import BoxMaps
from vqa.heatmap import data_uri
from vqa.storage import read_json, write_text

GALLERY_SIZE = 24
CONFUSION_ANSWERS = 12
THUMBNAIL = 220  # px, longest side of an embedded image
HEATMAP_PANEL = 120  # px, longest side of each attention panel of a card
BAR_WIDTH = 320  # px for 100 %
GRID = BAR_WIDTH // 4  # a grid line every 25 %

STYLE = f"""
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px 32px;color:#222;max-width:1120px}}
h1{{font-size:1.45em;margin-bottom:.2em}}h2{{font-size:1.1em;margin:1.8em 0 .5em}}
.summary{{color:#444}}.summary b{{color:#111}}
.legend span{{display:inline-block;margin-right:16px;font-size:.85em}}
.legend i{{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}}
table.chart{{border-collapse:collapse;font-size:.85em}}
table.chart td{{padding:3px 8px 3px 0;vertical-align:middle;white-space:nowrap}}
table.chart td.label{{text-align:right;min-width:110px}}
table.chart td.n{{color:#888;text-align:right}}
.track{{position:relative;width:{BAR_WIDTH}px;
  background:repeating-linear-gradient(90deg,#f3f3f3 0,#f3f3f3 {GRID - 1}px,#ddd {GRID - 1}px,#ddd {GRID}px)}}
.bar{{display:block;border-radius:0 2px 2px 0}}
.bar.model{{height:12px;background:#3869b3}}.bar.base{{height:7px;margin-top:2px;background:#d4a72c}}
.value{{font-variant-numeric:tabular-nums}}.value.base{{color:#9a7515}}
table.confusion{{border-collapse:collapse;font-size:.8em}}
table.confusion td,table.confusion th{{border:1px solid #ddd;padding:3px 6px;text-align:right;min-width:26px}}
table.confusion th{{background:#fafafa;font-weight:600}}
table.confusion th.corner{{background:#fff;font-weight:400;color:#777;text-align:left}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:10px;font-size:.85em;background:#fff}}
.card .image{{height:170px;display:flex;align-items:center;justify-content:center;text-align:center;
  background:#f4f4f4;border-radius:4px;overflow:hidden}}
.card img{{width:100%;height:100%;object-fit:contain}}
.card .question{{font-weight:600;margin:.6em 0 .3em}}
.card ol{{margin:.2em 0;padding-left:1.4em}}.card li span{{color:#777}}
.verdict{{display:inline-block;font-size:.8em;font-weight:600;padding:1px 7px;border-radius:9px;color:#fff}}
.card.right{{border-left:5px solid #2e8b57}}.card.right .verdict{{background:#2e8b57}}
.card.partly{{border-left:5px solid #d08b00}}.card.partly .verdict{{background:#d08b00}}
.card.wrong{{border-left:5px solid #c0392b}}.card.wrong .verdict{{background:#c0392b}}
.humans{{color:#555;margin-top:.4em}}
.gallery.attention{{grid-template-columns:repeat(auto-fill,minmax(470px,1fr))}}
.card .views{{display:flex;gap:8px}}.card .views>div{{flex:1;min-width:0}}
.card .heatmap{{height:170px;display:flex;align-items:center;justify-content:center;text-align:center;
  background:#202020;border-radius:4px;overflow:hidden}}
.muted{{color:#888}}
"""


def _picture(path: Path):
    """A small RGB PIL image of ``path`` (longest side ``THUMBNAIL``), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return image


def _heatmap_uri(picture, maps: np.ndarray | BoxMaps, names: Sequence[str] | None) -> str:
    """A data: URI of the example's attention panels, drawn over its picture (a grey canvas without one):
    heatmaps of (G, H, W) maps over a grid, boxes of ``BoxMaps`` over detector regions."""
    from vqa import box_drawing, heatmap

    if isinstance(maps, BoxMaps):
        panels = box_drawing.render(picture, maps, names, longest=HEATMAP_PANEL, grow=True, font_size=10)
    else:
        panels = heatmap.render(picture, maps, names, longest=HEATMAP_PANEL, grow=True, font_size=10)
    return data_uri(panels, quality=80)


def gallery_rows(count: int) -> list[int]:
    """The rows of a split's questions that the report's gallery shows: up to ``GALLERY_SIZE``, evenly spaced.

    ``vqa.evaluate`` computes attention maps for these rows only.
    """
    return list(range(0, count, max(1, count // GALLERY_SIZE)))[:GALLERY_SIZE]


def _bar_chart(title: str, section_id: str, model: dict[str, float], baseline: dict[str, float] | None,
               counts: Counter, baseline_name: str | None) -> str:
    """Rows of label | bars (this run, baseline under it) | values | questions, most asked first."""
    labels = sorted(model, key=lambda label: (-counts.get(label, 0), _type_name(label)))
    rows = []
    for label in labels:
        value = model[label]
        bars = f'<span class="bar model" style="width:{BAR_WIDTH * value / 100:.1f}px"></span>'
        values = f'<span class="value">{value:.2f}</span>'
        if baseline is not None:
            base = baseline.get(label)
            bars += f'<span class="bar base" style="width:{BAR_WIDTH * (base or 0) / 100:.1f}px"></span>'
            values += f' <span class="value base">/ {"-" if base is None else f"{base:.2f}"}</span>'
        count = counts.get(label)
        rows.append(f'<tr><td class="label">{html.escape(_type_name(label))}</td><td><div class="track">{bars}</div></td>'
                    f'<td>{values}</td><td class="n">{"" if count is None else f"n={count}"}</td></tr>')
    return (f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{_legend(baseline_name)}'
            f'<table class="chart">{"".join(rows)}</table></section>')


def _type_name(label: object) -> str:
    """An answer or question type as shown; a missing one (None) reads "(none)"."""
    return "(none)" if label is None else str(label)


def _legend(baseline_name: str | None) -> str:
    items = ['<span><i style="background:#3869b3"></i>this run</span>']
    if baseline_name is not None:
        items.append(f'<span><i style="background:#d4a72c"></i>baseline {html.escape(baseline_name)}</span>')
    items.append('<span class="muted">VQA accuracy, %; grid lines every 25</span>')
    return f'<p class="legend">{"".join(items)}</p>'


def _confusion(predicted: list[str], truth: list[str]) -> str:
    """Counts of (multiple-choice answer, predicted answer) over the most frequent true answers.

    Cells are shaded by their share of the row, so a row's mistakes stand out at a glance.
    """
    labelled = [(t, p) for t, p in zip(truth, predicted) if t]
    if not labelled:
        return ""
    top = [answer for answer, _ in Counter(t for t, _ in labelled).most_common(CONFUSION_ANSWERS)]
    index = {answer: i for i, answer in enumerate(top)}
    table = np.zeros((len(top), len(top) + 1), int)
    for t, p in labelled:
        if t in index:
            table[index[t], index.get(p, len(top))] += 1
    head = "".join(f"<th>{html.escape(a)}</th>" for a in top) + "<th>other</th>"
    body = []
    for i, answer in enumerate(top):
        total = max(int(table[i].sum()), 1)
        cells = []
        for j, count in enumerate(table[i]):
            shade = f"rgba({'46,139,87' if j == i else '192,57,43'},{0.12 + 0.6 * count / total:.2f})" if count else ""
            style = f' style="background:{shade}"' if shade else ""
            cells.append(f"<td{style}>{count or ''}</td>")
        body.append(f"<tr><th>{html.escape(answer)}</th>{''.join(cells)}</tr>")
    return ('<section id="confusion"><h2>Answer confusion among the most frequent answers</h2>'
            '<p class="muted">rows: the multiple-choice (most common human) answer; columns: the predicted answer; '
            'green: right, red: mistaken for another answer</p>'
            f'<table class="confusion"><tr><th class="corner">true \\ predicted</th>{head}</tr>{"".join(body)}'
            "</table></section>")


def _card(question: str, image_id: int, thumbnail: str | None, top: list[tuple[str, float]], humans: list[str],
          accuracy: float | None, heatmap: str | None = None, attention_run: bool = False) -> str:
    if thumbnail:
        image_html = f'<img src="{thumbnail}" alt="COCO image {image_id}">'
    else:
        image_html = f'<span class="muted">image {image_id} not available<br>(answered from a zero image vector)</span>'
    views = f'<div class="image">{image_html}</div>'
    if attention_run:
        heatmap_html = (f'<img class="attention" src="{heatmap}" alt="attention maps over image {image_id}">'
                        if heatmap else '<span class="muted">no attention map<br>(no image grid)</span>')
        views = f'<div class="views">{views}<div class="heatmap">{heatmap_html}</div></div>'
    answers = "".join(f"<li>{html.escape(answer)} <span>{score:.2f}</span></li>" for answer, score in top)
    if accuracy is None:
        verdict, badge = "", ""
    else:
        verdict = "right" if accuracy >= 100 else "partly" if accuracy > 0 else "wrong"
        label = {"right": "right", "partly": "partly right", "wrong": "wrong"}[verdict]
        badge = f'<p><span class="verdict">{label}</span> <span class="muted">VQA accuracy {accuracy:.0f}%</span></p>'
    humans_html = (f'<p class="humans">humans: {", ".join(html.escape(a) for a in humans)}</p>' if humans else "")
    return (f'<div class="card {verdict}">{views}'
            f'<p class="question">{html.escape(question)}</p><ol>{answers}</ol>{humans_html}{badge}</div>')


def write_report(path: Path, *, run_dir: Path, data_dir: Path, split: str, scores: np.ndarray,
                 question_ids: np.ndarray, answers: list[str], metrics: dict, per_question: dict | None,
                 annotations: list[dict] | None = None, baseline: str | Path | None = None,
                 attention: Mapping[int, np.ndarray] | None = None, map_names: Sequence[str] | None = None) -> Path:
    """Write the report for one evaluation.

    Args:
        path: the HTML file to write (atomically).
        run_dir: the evaluated run.
        data_dir: the preprocessed folder holding ``split``.
        split: the split evaluated.
        scores: float32 (N, K) answer scores, rows in the split's question order.
        question_ids: int64 (N,) in the same order.
        answers: the K answer strings.
        metrics: the evaluation metrics evaluate wrote (official keys when annotated).
        per_question: question id -> VQA accuracy in percent, or None without annotations.
        annotations: the split's annotations (human answers, types), or None.
        baseline: the baseline run's evaluation metrics of ``split`` (``vqa.run_folder.eval_metrics_path``),
            or None.
        attention: for an attention run, the attention maps of the gallery's rows (``gallery_rows``)
            that have an image input, by row: float (G, H, W) over a grid, ``vqa.box_drawing.BoxMaps``
            over detector regions; None for a global run.
        map_names: the G panel names ("hop 1", ...; ``vqa.heatmap.map_names``).

    Returns:
        ``path``.
    """
    from vqa.layout import image_path
    from vqa.manifest import load_manifest
    from vqa.split_files import read_text_columns

    entry = load_manifest(data_dir).splits[split]
    columns = read_text_columns(Path(data_dir) / split)
    questions = columns.questions
    image_ids = [int(i) for i in columns.image_ids]
    truth = columns.answers
    by_id = {a["question_id"]: a for a in annotations or []}
    answer_type_counts = Counter(a.get("answer_type") for a in by_id.values())
    question_type_counts = Counter(a.get("question_type") for a in by_id.values())

    baseline_metrics = read_json(baseline, "baseline metrics") if baseline else None
    baseline_name = Path(baseline).parents[2].name if baseline else None

    count = len(question_ids)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :3] if count else np.zeros((0, 3), int)
    predicted = [answers[row[0]] for row in order]
    run_name = Path(run_dir).name
    parts = [f"<h1>VQA evaluation: {html.escape(run_name)} on {html.escape(split)}</h1>"]
    facts = [f"{count} questions"]
    if metrics.get("questions_without_image"):
        facts.append(f"{metrics['questions_without_image']} without an image (answered from a zero image vector)")
    if "overall" in metrics:
        headline = f"Overall VQA accuracy <b>{metrics['overall']:.2f}</b>"
        if baseline_metrics and "overall" in baseline_metrics:
            headline += f" (baseline {html.escape(baseline_name)}: <b>{baseline_metrics['overall']:.2f}</b>)"
        parts.append(f'<p class="summary">{headline}, official metric; {"; ".join(facts)}.</p>')
        if baseline_metrics and baseline_metrics.get("num_questions") not in (None, count):
            parts.append(f'<p class="muted">The baseline answered {baseline_metrics["num_questions"]} questions, '
                         f"this run {count}: the two were evaluated on different subsets.</p>")
        base_types = baseline_metrics.get("perAnswerType") if baseline_metrics else None
        base_questions = baseline_metrics.get("perQuestionType") if baseline_metrics else None
        parts.append(_bar_chart("Accuracy per answer type", "answer-types", metrics["perAnswerType"], base_types,
                                answer_type_counts, baseline_name))
        parts.append(_bar_chart("Accuracy per question type", "question-types", metrics["perQuestionType"],
                                base_questions, question_type_counts, baseline_name))
        parts.append(_confusion(predicted, truth[:count]))
    else:
        parts.append(f'<p class="summary">{"; ".join(facts)} answered; {html.escape(split)} has no annotations, so '
                     "there is no accuracy here: upload the results file to the VQA evaluation server.</p>")

    images_dir = Path(entry.images_dir or data_dir)
    cards = []
    for row in gallery_rows(count):
        question_id = int(question_ids[row])
        annotation = by_id.get(question_id, {})
        picture = _picture(image_path(images_dir, split, image_ids[row]))
        maps = attention.get(row) if attention is not None else None
        cards.append(_card(
            questions[row], image_ids[row], data_uri(picture, quality=82) if picture is not None else None,
            [(answers[i], float(scores[row, i])) for i in order[row]],
            [human["answer"] for human in annotation.get("answers") or []
             if isinstance(human, dict) and isinstance(human.get("answer"), str)],
            per_question.get(question_id) if per_question else None,
            _heatmap_uri(picture, maps, map_names) if maps is not None else None, attention is not None,
        ))
    explained = ""
    if attention is not None:
        panels = f" ({html.escape(', '.join(map_names))})" if map_names else ""
        boxes = any(isinstance(maps, BoxMaps) for maps in attention.values())
        brighter = ("each detector box filled brighter and more opaque the higher its weight, the strongest on top "
                    "and the top 3 labelled with their weight" if boxes else "brighter where its weight is higher")
        explained = ('<p class="muted">Beside each image, where the model looked: one panel per attention '
                     f"map{panels}, {brighter} (scaled to the map's top weight, given in its label).</p>")
    parts.append(f'<section id="gallery"><h2>Examples ({len(cards)} of {count}, evenly spaced)</h2>{explained}'
                 f'<div class="gallery{" attention" if attention is not None else ""}">{"".join(cards)}</div>'
                 "</section>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>VQA report: {html.escape(run_name)} on {html.escape(split)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    write_text(path, page)
    return Path(path)
