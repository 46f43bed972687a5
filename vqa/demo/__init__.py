"""``make demo``: the whole pipeline on a built-in synthetic dataset, offline.

Steps, each skipped when its output is already complete (so an interrupted demo
continues where it stopped):
    1. ``vqa demo-data``: synthetic scenes of coloured shapes with VQA v2-style
       questions and 10 human answers each, in the official file layout.
    2. Stand-ins for what cannot be downloaded offline, passed through the same options
       real data uses: a small CNN pretrained on the demo's scene labels (for ImageNet
       VGG-16, ``--weights``) and a spaCy pipeline with 300-d vectors for the demo's words
       (for en_core_web_lg, ``--vectors``).
    3. ``vqa preprocess``, then ``vqa train`` of the default model and of the
       question-only (blind) baseline with the same settings.
    4. ``vqa evaluate`` of both on val2014 with the official metric, and ``vqa predict``
       on one demo image.
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
DEMO_PREPROCESS = {"splits": "train2014,val2014", "top_answers": 1000, "max_question_length": 25,
                   "feature_dtype": "float16", "batch_size": 32}
QUICK_SETTINGS = {
    "model": {"lstm_units": 16, "hidden_units": 32, "fusion_units": 32, "dropout": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
}


def demo_preprocess_settings(raw: Path, vectors: Path, backbone: Path) -> config_lib.PreprocessSettings:
    """``preprocessing/demo.json`` (the defaults: both splits, 1000 answers, 25 tokens) with this demo's paths."""
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


def accuracy_table(model_metrics: dict, blind_metrics: dict) -> str:
    """Overall and per answer type, model vs question-only, in points."""
    rows = [("overall", model_metrics["overall"], blind_metrics["overall"])]
    for answer_type in sorted(model_metrics["perAnswerType"]):
        rows.append((answer_type, model_metrics["perAnswerType"][answer_type],
                     blind_metrics["perAnswerType"].get(answer_type, float("nan"))))
    lines = [f"{'VQA accuracy (val2014)':<24}{'model':>8}{'blind':>8}{'gain':>8}"]
    for name, model, blind in rows:
        lines.append(f"{name:<24}{model:>8.2f}{blind:>8.2f}{model - blind:>+8.2f}")
    return "\n".join(lines)


def run_demo(out: str | Path = "demo", runs_dir: str | Path = "models", quick: bool = False,
             log: Callable[[str], None] = print) -> int:
    """Run the demo; returns 0 when the model beats the blind baseline by 25 points (quick: when it runs)."""
    from vqa.demo.backbone import train_demo_backbone
    from vqa.demo.data import write_demo_dataset
    from vqa.evaluate import evaluate
    from vqa import run_folder
    from vqa.predict import Predictor
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

    t = _step(log, "3/6 preprocess", f"vqa preprocess --config preprocessing/demo.json --out {processed} "
                                     f"--data-dir {raw} --vectors {vectors_path} --weights {backbone_path}")
    preprocess(demo_preprocess_settings(raw, vectors_path, backbone_path), processed, log=log)
    _done(log, t)

    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    metrics = {}
    blind_dir = runs_dir / "demo-question-only"
    # The blind run goes first so that the model's report can show it beside the model's bars.
    for position, (run_name, model_name, baseline) in enumerate(
        (("demo-question-only", "question-only", None), ("demo", "deeper-lstm-norm-i", blind_dir)), start=4
    ):
        run_dir = runs_dir / run_name
        overrides = " ".join(f"--set {section}.{key}={value}" for section, values in settings.items()
                             for key, value in values.items())
        t = _step(log, f"{position}/6 train {model_name} (demo widths)",
                  f"vqa train --data {processed} --out {run_dir} --model {model_name} {overrides}")
        config = config_lib.from_dict(
            {"data": {"data_dir": str(processed)}, "model": {**settings["model"], "name": model_name},
             "train": settings["train"]}, source="demo settings")
        train(processed, run_dir, config, log=log)
        log(f"   $ vqa evaluate --run {run_dir} --data {processed} --split val2014"
            + (f" --baseline {baseline}" if baseline else ""))
        metrics[run_name] = evaluate(run_dir, processed, split="val2014", baseline=baseline, log=log)
        _done(log, t)

    image, question, expected = _pick_example(raw)
    t = _step(log, "6/6 predict", f"vqa predict --run {runs_dir / 'demo'} --image {image} --question \"{question}\"")
    answer = Predictor(runs_dir / "demo").answer([image], [question], top_k=3)[0]
    log(f"   Q: {question}   (human answer: {expected})")
    for rank, (text, score) in enumerate(answer.answers, start=1):
        log(f"   {rank}. {text:<12} {score:.3f}")

    model_metrics, blind_metrics = metrics["demo"], metrics["demo-question-only"]
    gain = model_metrics["overall"] - blind_metrics["overall"]
    print("\n" + accuracy_table(model_metrics, blind_metrics), flush=True)
    log(
        f"\nWritten: data {raw}, preprocessed {processed}, runs {runs_dir / 'demo'} and "
        f"{runs_dir / 'demo-question-only'} (metrics, results and report in each run's "
        f"{run_folder.eval_dir('', 'val2014')}/). "
        f"Total {time.monotonic() - started_all:.0f} s.\n"
        "Stand-ins used: image features from a small CNN pretrained on the demo's scene labels (not ImageNet "
        "VGG-16); word vectors from a generated spaCy pipeline (not en_core_web_lg)."
    )
    if quick:
        return 0
    if gain < 25:
        log(f"The model is only {gain:.2f} points above the blind baseline (target: 25).")
        return 1
    log(f"The model is {gain:.2f} points above the question-only baseline.")
    return 0
