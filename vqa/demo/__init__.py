"""``make demo``: the whole pipeline on a built-in synthetic dataset, offline.

Steps, each skipped when its output is already complete (so an interrupted demo
continues where it stopped):
    1. ``vqa demo-data``: synthetic scenes of coloured shapes with VQA v2-style
       questions and 10 human answers each, in the official file layout.
    2. Stand-ins for what cannot be downloaded offline, passed through the same options
       real data uses: a small CNN pretrained on the demo's scene labels (for ImageNet
       VGG-16, ``--weights``) and a spaCy pipeline with 300-d vectors for the demo's words
       (for en_core_web_lg, ``--vectors``).
    3. ``vqa preprocess``, extracting both the global features and the grid of the
       stand-in CNN (its last 2 x 2 map, one cell per scene quadrant) in one pass.
    4. ``vqa train`` of the question-only (blind) baseline, the default global model and a
       multi-glimpse attention model, with the same settings, each followed by ``vqa
       evaluate`` on val2014 with the official metric.
    5. Whether the attention looks at the object a colour question names
       (``vqa.demo.pointing``), and ``vqa predict`` on one demo image with its attention map.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from vqa import config as config_lib
from vqa import layout
from vqa.storage import read_json

# Demo widths: the published architecture, narrowed so both runs train in about a
# minute each on 2 CPU cores. Real data uses the code defaults (vqa/config.py).
DEMO_SETTINGS = {
    "model": {"lstm_units": 128, "hidden_units": 512, "fusion_units": 512, "dropout": 0.3},
    "train": {"epochs": 20, "batch_size": 32, "learning_rate": 0.001, "early_stopping_patience": 5},
}
# Demo questions have at most 7 tokens: 12 instead of the default 25 halves the LSTM's steps.
DEMO_PREPROCESS = {"splits": "train2014,val2014", "top_answers": 1000, "max_question_length": 12,
                   "feature_dtype": "float16", "batch_size": 32, "features": "both", "grid_layer": "auto"}
# The demo's three runs, trained in this order (the blind one first, so the others' reports show it).
RUNS = (("demo-question-only", "question-only"), ("demo", "deeper-lstm-norm-i"),
        ("demo-attention", "multi-glimpse"))
COLOR_TYPE = "what color is the"  # the question type one global vector answers worst
POINTING_TARGET = 0.8  # share of colour questions whose highest-weight cell lies inside the named object
QUICK_SETTINGS = {
    "model": {"lstm_units": 16, "hidden_units": 32, "fusion_units": 32, "dropout": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
}


def demo_preprocess_settings(raw: Path, vectors: Path, backbone: Path) -> config_lib.PreprocessSettings:
    """``preprocessing/demo.json`` (both splits, 1000 answers, 12 tokens, global features and grids) with this
    demo's paths."""
    paths = {"data_dir": str(raw), "vectors": str(vectors), "weights": str(backbone)}
    return config_lib.from_dict({"preprocess": {**DEMO_PREPROCESS, **paths}}, config_lib.PreprocessSettings(),
                                source="demo settings")


def _step(log: Callable[[str], None], title: str, command: str) -> float:
    log(f"\n== {title}\n   $ {command}")
    return time.monotonic()


def _done(log: Callable[[str], None], started: float) -> None:
    log(f"   done in {time.monotonic() - started:.0f} s")


def _demo_words(raw_dir: Path) -> list[str]:
    """Every token of the demo questions, for the stand-in vectors pipeline."""
    from vqa import text as text_lib

    words: set[str] = set()
    nlp = text_lib.blank_tokenizer("en")
    for split in ("train2014", "val2014"):
        data = read_json(raw_dir / layout.questions_filename(split), "demo questions")
        for tokens in text_lib.tokenize(nlp, [q["question"] for q in data["questions"]]):
            words.update(tokens)
    return sorted(words)


def _pick_example(raw_dir: Path) -> tuple[Path, str, str]:
    """The first val2014 question, its image and its multiple-choice answer."""
    questions = read_json(raw_dir / layout.questions_filename("val2014"), "demo questions")
    annotations = read_json(raw_dir / layout.annotations_filename("val2014"), "demo annotations")
    question = questions["questions"][0]
    answer = next(a["multiple_choice_answer"] for a in annotations["annotations"]
                  if a["question_id"] == question["question_id"])
    image = layout.image_path(raw_dir, "val2014", question["image_id"])
    return image, question["question"], answer


def accuracy_table(columns: dict[str, dict], extra_question_types: tuple[str, ...] = (COLOR_TYPE,)) -> str:
    """Overall, per answer type and for some question types, one column per run, in points.

    Args:
        columns: column title -> the run's official metrics (``vqa.evaluate.evaluate``), in column order.
        extra_question_types: question types shown below the answer types.
    """
    first = next(iter(columns.values()))
    rows = [("overall", lambda m: m["overall"])]
    rows += [(name, lambda m, name=name: m["perAnswerType"].get(name, float("nan")))
             for name in sorted(first["perAnswerType"])]
    rows += [(f'"{name}"', lambda m, name=name: m.get("perQuestionType", {}).get(name, float("nan")))
             for name in extra_question_types if name in first.get("perQuestionType", {})]
    width = max(10, *(len(title) + 2 for title in columns))
    lines = [f"{'VQA accuracy (val2014)':<24}" + "".join(f"{title:>{width}}" for title in columns)]
    for label, value in rows:
        lines.append(f"{label:<24}" + "".join(f"{value(m):>{width}.2f}" for m in columns.values()))
    return "\n".join(lines)


def run_demo(out: str | Path = "demo", runs_dir: str | Path = "models", quick: bool = False,
             log: Callable[[str], None] = print) -> int:
    """Run the demo; 0 when it shows what it should (quick: when it runs).

    Targets: the global model 25 points above the blind baseline; the attention model
    above the global one on "what color is the" questions; and the attention's
    highest-weight cell inside the named object's box for ``POINTING_TARGET`` of them.
    """
    from vqa.demo.backbone import train_demo_backbone
    from vqa.demo.data import write_demo_dataset
    from vqa.demo.pointing import attention_pointing
    from vqa.evaluate import evaluate
    from vqa import run_folder
    from vqa.heatmap import map_names
    from vqa.predict import Predictor, draw_attention
    from vqa.questions import Question
    from vqa.preprocess import preprocess
    from vqa.vectors import make_vectors_pipeline
    from vqa.train import train

    out, runs_dir = Path(out), Path(runs_dir)
    raw, processed = out / "raw", out / "processed"
    backbone_path, vectors_path = out / "stand_in_cnn.keras", out / "vectors"
    train_images, val_images = (120, 60) if quick else (600, 200)
    started_all = time.monotonic()

    if not (raw / layout.annotations_filename("val2014")).exists():
        t = _step(log, "1/6 demo dataset", f"vqa demo-data {raw} --train-images {train_images} --val-images {val_images}")
        write_demo_dataset(raw, train_images=train_images, val_images=val_images, seed=0)
        _done(log, t)

    if not backbone_path.exists():
        t = _step(log, "2/6 stand-in image backbone: a small CNN pretrained on the demo's scene labels "
                       "(stands in for ImageNet VGG-16, which needs a download)", "(vqa.demo.backbone)")
        report = train_demo_backbone(raw, backbone_path, seed=0, **({"epochs": 2} if quick else {}))
        log(f"   backbone: {json.dumps(report)}")
        _done(log, t)
    if not (vectors_path / "meta.json").exists():
        t = _step(log, "2/6 stand-in word vectors: a spaCy pipeline with 300-d vectors for the demo's words "
                       "(stands in for en_core_web_lg, which needs a download)", "(vqa.vectors.make_vectors_pipeline)")
        make_vectors_pipeline(_demo_words(raw), vectors_path)
        _done(log, t)

    t = _step(log, "3/6 preprocess: global features and the 2 x 2 grid in one pass",
              f"vqa preprocess --config preprocessing/demo.json --out {processed} --data-dir {raw} "
              f"--vectors {vectors_path} --weights {backbone_path}")
    preprocess(demo_preprocess_settings(raw, vectors_path, backbone_path), processed, log=log)
    _done(log, t)

    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    overrides = " ".join(f"--set {section}.{key}={value}" for section, values in settings.items()
                         for key, value in values.items())
    metrics = {}
    blind_dir = runs_dir / RUNS[0][0]
    for run_name, model_name in RUNS:
        run_dir = runs_dir / run_name
        baseline = None if run_dir == blind_dir else blind_dir
        t = _step(log, f"4/6 train {model_name} (demo widths)",
                  f"vqa train --data {processed} --out {run_dir} --model {model_name} {overrides}")
        config = config_lib.from_dict(
            {"data": {"data_dir": str(processed)}, "model": {**settings["model"], "name": model_name},
             "train": settings["train"]}, source="demo settings")
        train(processed, run_dir, config, log=log)
        log(f"   $ vqa evaluate --run {run_dir} --data {processed} --split val2014"
            + (f" --baseline {baseline}" if baseline else ""))
        metrics[run_name] = evaluate(run_dir, processed, split="val2014", baseline=baseline, log=log)
        _done(log, t)

    attention_dir = runs_dir / RUNS[2][0]
    t = _step(log, "5/6 does the attention look at the object a colour question names?", "(vqa.demo.pointing)")
    pointing = attention_pointing(attention_dir, processed, raw)
    log(f"   the highest-weight cell lies inside the named object's box for {pointing.hits} of "
        f"{pointing.questions} \"What color is the ...?\" val questions ({100 * pointing.rate:.1f}%)")
    _done(log, t)

    model_names = dict(RUNS)
    image, question, expected = _pick_example(raw)
    heatmap = attention_dir / "predict-attention.png"
    t = _step(log, "6/6 predict", f"vqa predict --run {attention_dir} --image {image} --question \"{question}\" "
                                  f"--attention {heatmap}")
    answer = Predictor(attention_dir).answer([image], [question], top_k=3, with_attention=True)[0]
    draw_attention(heatmap, answer, Question(question, image), map_names(model_names[attention_dir.name],
                                                                          len(answer.attention)))
    log(f"   Q: {question}   (human answer: {expected})")
    for rank, (text, score) in enumerate(answer.answers, start=1):
        log(f"   {rank}. {text:<12} {score:.3f}")
    log(f"   attention map: {heatmap}")

    table = {"attention": metrics["demo-attention"], "global": metrics["demo"], "blind": metrics["demo-question-only"]}
    print("\n" + accuracy_table(table), flush=True)
    log(
        f"\nWritten: data {raw}, preprocessed {processed}, runs "
        + ", ".join(str(runs_dir / name) for name, _ in RUNS)
        + f" (metrics, results and report in each run's {run_folder.eval_dir('', 'val2014')}/). "
        f"Total {time.monotonic() - started_all:.0f} s.\n"
        "Stand-ins used: image features and grids from a small CNN pretrained on the demo's scene labels (not "
        "ImageNet VGG-16); word vectors from a generated spaCy pipeline (not en_core_web_lg)."
    )
    log(f"Ask your own questions about your own photos in a browser: make serve RUN={attention_dir} "
        f"(with attention maps) or make serve RUN={runs_dir / RUNS[1][0]}, then open http://127.0.0.1:8000/")
    return 0 if quick else _verdict(table, pointing.rate, log)


def _verdict(table: dict[str, dict], pointing_rate: float, log: Callable[[str], None]) -> int:
    """0 when the demo shows its three points, else 1 after saying which one it missed."""
    gain = table["global"]["overall"] - table["blind"]["overall"]
    colour = {name: m.get("perQuestionType", {}).get(COLOR_TYPE, float("nan")) for name, m in table.items()}
    missed = []
    if gain < 25:
        missed.append(f"the global model is only {gain:.2f} points above the blind baseline (target: 25)")
    if not colour["attention"] > colour["global"]:
        missed.append(f"attention ({colour['attention']:.2f}) does not beat the global model "
                      f"({colour['global']:.2f}) on \"{COLOR_TYPE}\" questions")
    if pointing_rate < POINTING_TARGET:
        missed.append(f"the attention points at the named object for only {100 * pointing_rate:.1f}% of colour "
                      f"questions (target: {100 * POINTING_TARGET:.0f}%)")
    for line in missed:
        log(f"Missed: {line}.")
    if missed:
        return 1
    log(f"The global model is {gain:.2f} points above the question-only baseline; attention gets "
        f"{colour['attention']:.2f} on \"{COLOR_TYPE}\" questions against the global model's {colour['global']:.2f}.")
    return 0
