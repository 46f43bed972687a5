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
    6. Region models: stand-in bottom-up region features (``vqa.demo.crop_regions``: each
       object's labelled box and a few random boxes, their crops through the stand-in CNN, in
       the TSV layout of peteanderson80/bottom-up-attention), imported by a second ``vqa
       preprocess --regions`` with no image; ``vqa train`` and ``vqa evaluate`` of ``updown`` and
       ``mcan`` at CPU widths on them, and whether their attention picks the named object's box.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from vqa import config as config_lib
from vqa import layout
from vqa.demo.relations import RELATIONAL_TYPES
from vqa.storage import read_json

# Demo widths: the published architecture, narrowed so both runs train in about a
# minute each on 2 CPU cores. Real data uses the code defaults (vqa/config.py).
DEMO_SETTINGS = {
    "model": {"lstm_units": 128, "hidden_units": 512, "fusion_units": 512, "dropout": 0.3},
    "train": {"epochs": 20, "batch_size": 32, "learning_rate": 0.001, "early_stopping_patience": 5,
              "early_stopping_min_steps": 1000},  # for time: the blind run stops on its plateau at epoch 10
}
# Demo questions have at most 13 tokens ("what is the color of the object just left of the circle ?"):
# 13 instead of the default 25 halves the LSTM's steps.
DEMO_PREPROCESS = {"splits": "train2014,val2014", "top_answers": 1000, "max_question_length": 13,
                   "feature_dtype": "float16", "batch_size": 32, "features": "both", "grid_layer": "auto"}
# The demo's three runs, trained in this order (the blind one first, so the others' reports show it).
RUNS = (("demo-question-only", "question-only"), ("demo", "deeper-lstm-norm-i"),
        ("demo-attention", "multi-glimpse"))
COLOR_TYPE = "what color is the"  # the question type one global vector answers worst
POINTING_TARGET = 0.8  # share of colour questions whose highest-weight cell (or box) is the named object
QUICK_SETTINGS = {
    "model": {"lstm_units": 16, "hidden_units": 32, "fusion_units": 32, "dropout": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
}
# The region models, trained on the stand-in region features after the others, from their own recipes
# (vqa.registry) at CPU widths, with epochs and batch set for time as DEMO_SETTINGS does for the others
# (batch 32 is also what train.min_batches makes of the recipes' 512 and 64 on 3K questions). MCAN's
# recipe is made for some 90K optimizer steps (13 epochs of VQA v2); in the demo's 1,200 it stays on the
# plateau of a global model (about 60 points, measured) unless it takes 10x the rate with a 1-epoch warmup
# and no decay, without dropout: then it leaves the plateau after 7-9 epochs (train.min_steps off: the
# demo sets its epochs for time).
REGION_RUNS = (("demo-updown", "updown"), ("demo-mcan", "mcan"))
REGION_SETTINGS = {
    "updown": {"model": {"hidden_units": 256}, "train": {"epochs": 6, "batch_size": 32}},
    "mcan": {"model": {"layers": 1, "hidden_units": 128, "heads": 4, "ff_units": 256, "flat_units": 256,
                       "dropout": 0.0},
             "train": {"epochs": 12, "batch_size": 32, "learning_rate": 0.001, "warmup_epochs": 1,
                       "lr_decay_at": "", "min_steps": 0}},
}
QUICK_REGION_SETTINGS = {
    "updown": {"model": {"hidden_units": 16}, "train": {"epochs": 1, "batch_size": 32}},
    "mcan": {"model": {"layers": 1, "hidden_units": 16, "heads": 2, "ff_units": 32, "flat_units": 16},
             "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "lr_decay_at": "", "min_steps": 0}},
}


def demo_preprocess_settings(raw: Path, vectors: Path, backbone: Path) -> config_lib.PreprocessSettings:
    """``preprocessing/demo.json`` (both splits, 1000 answers, 13 tokens, global features and grids) with this
    demo's paths."""
    paths = {"data_dir": str(raw), "vectors": str(vectors), "weights": str(backbone)}
    return config_lib.from_dict({"preprocess": {**DEMO_PREPROCESS, **paths}}, config_lib.PreprocessSettings(),
                                source="demo settings")


def region_preprocess_settings(raw: Path, vectors: Path, regions: Path) -> config_lib.PreprocessSettings:
    """The region OUT's preprocessing: the demo's splits, answers and question length, the region TSVs
    imported instead of any extraction (``features`` auto), so no image and no backbone are read."""
    shared = {key: DEMO_PREPROCESS[key] for key in ("splits", "top_answers", "max_question_length", "feature_dtype")}
    paths = {"data_dir": str(raw), "vectors": str(vectors), "regions": str(regions), "features": "auto"}
    return config_lib.from_dict({"preprocess": {**shared, **paths}}, config_lib.PreprocessSettings(),
                                source="demo region settings")


def _overrides(settings: dict[str, dict]) -> str:
    return " ".join(f"--set {section}.{key}={value}" for section, values in settings.items()
                    for key, value in values.items())


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


def accuracy_table(columns: dict[str, dict],
                   extra_question_types: tuple[str, ...] = (COLOR_TYPE, *RELATIONAL_TYPES)) -> str:
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
    labels = max(24, *(len(label) + 1 for label, _ in rows))
    lines = [f"{'VQA accuracy (val2014)':<{labels}}" + "".join(f"{title:>{width}}" for title in columns)]
    for label, value in rows:
        lines.append(f"{label:<{labels}}" + "".join(f"{value(m):>{width}.2f}" for m in columns.values()))
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
        t = _step(log, "1/10 demo dataset",
                  f"vqa demo-data {raw} --train-images {train_images} --val-images {val_images}")
        write_demo_dataset(raw, train_images=train_images, val_images=val_images, seed=0)
        _done(log, t)

    if not backbone_path.exists():
        t = _step(log, "2/10 stand-in image backbone: a small CNN pretrained on the demo's scene labels "
                       "(stands in for ImageNet VGG-16, which needs a download)", "(vqa.demo.backbone)")
        report = train_demo_backbone(raw, backbone_path, seed=0, **({"epochs": 2} if quick else {}))
        log(f"   backbone: {json.dumps(report)}")
        _done(log, t)
    if not (vectors_path / "meta.json").exists():
        t = _step(log, "2/10 stand-in word vectors: a spaCy pipeline with 300-d vectors for the demo's words "
                       "(stands in for en_core_web_lg, which needs a download)", "(vqa.vectors.make_vectors_pipeline)")
        make_vectors_pipeline(_demo_words(raw), vectors_path)
        _done(log, t)

    t = _step(log, "3/10 preprocess: global features and the 2 x 2 grid in one pass",
              f"vqa preprocess --config preprocessing/demo.json --out {processed} --data-dir {raw} "
              f"--vectors {vectors_path} --weights {backbone_path}")
    preprocess(demo_preprocess_settings(raw, vectors_path, backbone_path), processed, log=log)
    _done(log, t)

    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    overrides = _overrides(settings)
    metrics = {}
    blind_dir = runs_dir / RUNS[0][0]
    for run_name, model_name in RUNS:
        run_dir = runs_dir / run_name
        baseline = None if run_dir == blind_dir else blind_dir
        t = _step(log, f"4/10 train {model_name} (demo widths)",
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
    t = _step(log, "5/10 does the attention look at the object a colour question names?", "(vqa.demo.pointing)")
    pointing = attention_pointing(attention_dir, processed, raw)
    log(f"   the highest-weight cell lies inside the named object's box for {pointing.hits} of "
        f"{pointing.questions} \"What color is the ...?\" val questions ({100 * pointing.rate:.1f}%)")
    _done(log, t)

    model_names = dict(RUNS)
    image, question, expected = _pick_example(raw)
    heatmap = attention_dir / "predict-attention.png"
    t = _step(log, "6/10 predict", f"vqa predict --run {attention_dir} --image {image} --question \"{question}\" "
                                  f"--attention {heatmap}")
    answer = Predictor(attention_dir).answer([image], [question], top_k=3, with_attention=True)[0]
    draw_attention(heatmap, answer, Question(question, image), map_names(model_names[attention_dir.name],
                                                                          len(answer.attention)))
    log(f"   Q: {question}   (human answer: {expected})")
    for rank, (text, score) in enumerate(answer.answers, start=1):
        log(f"   {rank}. {text:<12} {score:.3f}")
    log(f"   attention map: {heatmap}")
    _done(log, t)

    region_processed = out / "processed_regions"
    metrics.update(_region_models(out, raw, vectors_path, backbone_path, region_processed, runs_dir, blind_dir,
                                  quick, log))

    table = {"attention": metrics["demo-attention"], "mcan": metrics["demo-mcan"], "global": metrics["demo"],
             "blind": metrics["demo-question-only"]}
    print("\n" + accuracy_table(table), flush=True)
    log(
        f"\nWritten: data {raw}, preprocessed {processed} and {region_processed} (regions), runs "
        + ", ".join(str(runs_dir / name) for name, _ in RUNS + REGION_RUNS)
        + f" (metrics, results and report in each run's {run_folder.eval_dir('', 'val2014')}/). "
        f"Total {time.monotonic() - started_all:.0f} s.\n"
        "Stand-ins used: image features and grids from a small CNN pretrained on the demo's scene labels (not "
        "ImageNet VGG-16); region features from the same CNN on crops of the labelled boxes and a few random "
        "ones (not a Faster R-CNN detector's); word vectors from a generated spaCy pipeline (not en_core_web_lg)."
    )
    log(f"Ask your own questions about your own photos in a browser: make serve RUN={attention_dir} "
        f"(with attention maps) or make serve RUN={runs_dir / RUNS[1][0]}, then open http://127.0.0.1:8000/")
    return 0 if quick else _verdict(table, pointing.rate, log)


def _region_models(out: Path, raw: Path, vectors_path: Path, backbone_path: Path, processed: Path, runs_dir: Path,
                   blind_dir: Path, quick: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """Steps 7-10: stand-in region features, their OUT, updown and mcan trained and evaluated on it, and where
    their attention looks. Returns run name -> its val2014 metrics."""
    from vqa import registry
    from vqa.demo.crop_regions import write_crop_regions
    from vqa.demo.pointing import REGION_IOU, region_pointing
    from vqa.evaluate import evaluate
    from vqa.preprocess import preprocess
    from vqa.train import train

    tsv_dir = out / "regions_tsv"
    t = _step(log, "7/10 stand-in region features: the demo CNN on crops of each object's labelled box and of a "
                   "few random boxes (a stand-in for a Faster R-CNN detector's bottom-up features, which need a "
                   "download), in peteanderson80's TSV layout", "(vqa.demo.crop_regions)")
    written = write_crop_regions(raw, backbone_path, tsv_dir, seed=0, verbose=not quick)
    log("   " + ", ".join(str(path) for path in written.values()))
    _done(log, t)

    settings = region_preprocess_settings(raw, vectors_path, tsv_dir)
    t = _step(log, "8/10 preprocess the region features: imported, no image read",
              f"vqa preprocess --data-dir {raw} --out {processed} --vectors {vectors_path} --regions {tsv_dir} "
              f"--features auto --set preprocess.max_question_length={settings.preprocess.max_question_length}")
    preprocess(settings, processed, log=log)
    _done(log, t)

    metrics = {}
    for run_name, model_name in REGION_RUNS:
        run_dir = runs_dir / run_name
        chosen = (QUICK_REGION_SETTINGS if quick else REGION_SETTINGS)[model_name]
        t = _step(log, f"9/10 train {model_name} on the region features (CPU widths, its recipe otherwise)",
                  f"vqa train --data {processed} --out {run_dir} --model {model_name} {_overrides(chosen)}")
        config = config_lib.from_dict({"data": {"data_dir": str(processed)}, **chosen},
                                      registry.recipe_config(model_name), source="demo region settings")
        train(processed, run_dir, config, log=log)
        log(f"   $ vqa evaluate --run {run_dir} --data {processed} --split val2014 --baseline {blind_dir}")
        metrics[run_name] = evaluate(run_dir, processed, split="val2014", baseline=blind_dir, log=log)
        _done(log, t)
    log("\n" + accuracy_table({name: metrics[run] for run, name in REGION_RUNS}))

    t = _step(log, "10/10 does the region models' attention pick the named object's box?", "(vqa.demo.pointing)")
    for run_name, model_name in REGION_RUNS:
        pointing = region_pointing(runs_dir / run_name, processed, raw)
        met = "met" if pointing.rate >= POINTING_TARGET else "missed"
        log(f"   {model_name}: the highest-weight box is the named object's (IoU >= {REGION_IOU}) for "
            f"{pointing.hits} of {pointing.questions} \"What color is the ...?\" val questions "
            f"({100 * pointing.rate:.1f}%; target {100 * POINTING_TARGET:.0f}%: {met})")
    _done(log, t)
    return metrics


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
