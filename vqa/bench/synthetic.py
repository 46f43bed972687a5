"""Generated inputs, so the benchmark runs offline: VQA-like questions with human answers,
photo-like JPEGs, the benchmark's backbones, and a preprocessed OUT written by the real writers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from vqa.bench.settings import MAX_QUESTION_LENGTH, NUM_ANSWERS, WORD_VECTOR_DIM, Sizes

SPLIT = "train2014"

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

    The demo dataset's colours and shapes (``vqa.demo.data``) join COCO-like nouns,
    people and activities; contractions, plurals and multi-word nouns exercise the
    tokenizer as real questions do.
    """
    from vqa.demo import data as demo_data

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


def vqa_like_split(num_questions: int, num_images: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Official-format questions and annotations: VQA-like questions with ten human answers each.

    Returns:
        (questions, annotations): dicts as in the official questions and annotations
        files, one annotation per question in the same order.
    """
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
    return questions, annotations


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
        path = folder / f"bench_photo_{index:012d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def vgg16_spec():
    """VGG-16 fc7 with seeded random weights: the real architecture at the cost of ImageNet weights."""
    from vqa.backbone import VGG16_FEATURE_DIM, VGG16_IMAGE_SIZE, BackboneSpec

    return BackboneSpec(kind="vgg16", weights="none", image_size=VGG16_IMAGE_SIZE, feature_dim=VGG16_FEATURE_DIM)


def bench_backbone_spec(sizes: Sizes, work: Path):
    """The backbone ``sizes`` asks for: VGG-16 (``vgg16_spec``), or the quick run's small CNN saved in ``work``."""
    from vqa.backbone import load_backbone

    if sizes.backbone == "vgg16":
        return vgg16_spec()
    path = work / "stand_in_cnn.keras"
    if not path.exists():
        from vqa.demo import backbone as demo_backbone

        demo_backbone.build_feature_extractor(64, feature_dim=32).save(path)
    return load_backbone(str(path)).spec


def write_synthetic_out(out_dir: Path, num_questions: int, num_images: int, backbone=None,
                        vocabulary_size: int = 2000, seed: int = 0) -> Path:
    """A preprocessed OUT in the layout vqa.split_files documents, with random content, for timing training.

    One split, train2014: ``num_questions`` questions of 4-12 tokens over
    ``num_images`` images of float16 features as wide as ``backbone`` makes them
    (a ``BackboneSpec``; default VGG-16 fc7, 4096-d), 1000 answers with VQA-like
    soft scores (one to three classes per question). Every file is written by the
    module that owns it, the blank English tokenizer included, so a run trained on
    this OUT can predict.
    """
    from vqa import answers as answers_lib
    from vqa import text
    from vqa.backbone import write_backbone
    from vqa.features import features_path, write_features
    from vqa.manifest import Manifest, SplitRecord, write_manifest
    from vqa.split_files import QuestionArrays, write_questions

    rng = np.random.default_rng(seed)
    split_dir = out_dir / SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    backbone = backbone or vgg16_spec()
    words = [text.PAD, text.UNK] + [f"word{i}" for i in range(vocabulary_size - 2)]
    text.write_vocabulary(out_dir, words)
    answers_lib.write_answers(out_dir, [f"answer {i}" for i in range(NUM_ANSWERS)], list(range(NUM_ANSWERS, 0, -1)))
    vectors = rng.standard_normal((vocabulary_size, WORD_VECTOR_DIM)).astype(np.float32)
    vectors[:2] = 0
    text.write_embeddings(out_dir, vectors)
    text.write_tokenizer(out_dir, text.blank_tokenizer("en"))
    write_backbone(out_dir, backbone)

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
    write_questions(split_dir, QuestionArrays(
        split=SPLIT, question_ids=np.arange(num_questions, dtype=np.int64), image_ids=image_index.astype(np.int64),
        token_ids=token_ids, image_index=image_index, answer_index=score_indices[:, 0].copy(),
        score_indices=score_indices, score_values=score_values, has_annotations=True))
    # ReLU-like fc7 features: non-negative, mostly small.
    features = np.maximum(rng.standard_normal((num_images, backbone.feature_dim), dtype=np.float32), 0)
    write_features(features_path(split_dir), np.arange(num_images, dtype=np.int64), features.astype(np.float16),
                   backbone)
    write_manifest(out_dir, Manifest(
        splits={SPLIT: SplitRecord(num_questions=num_questions, num_images=num_images)},
        data_dir=str(out_dir), vectors="bench: random vectors", lang="en", first_split=SPLIT,
        max_question_length=MAX_QUESTION_LENGTH, top_answers=NUM_ANSWERS, vocabulary_size=vocabulary_size,
        embedding_dim=WORD_VECTOR_DIM, num_answers=NUM_ANSWERS, backbone=backbone.to_dict(),
        feature_dim=backbone.feature_dim))
    return out_dir


def random_grid_spec(channels: int):
    """The backbone recorded for random grids: an import (no model) of ``channels``-channel grids."""
    from vqa.backbone import BackboneSpec

    return BackboneSpec.for_import("vqa bench: random ReLU-like grids", channels)


def write_synthetic_grid_out(out_dir: Path, num_questions: int, num_images: int, grid_shape: tuple[int, int, int],
                             seed: int = 0, block: int = 256) -> Path:
    """``write_synthetic_out``'s OUT plus the split's grid file, for timing the attention models.

    The grid file (``vqa.grid_features.write_grids``) holds ``num_images`` ReLU-like float16
    grids of ``grid_shape`` (H, W, C), e.g. VGG-16 ``block5_pool`` 7 x 7 x 512 (49 KiB an
    image); the OUT's image features are C wide, as the grids' mean over their cells would be.
    The grids are generated ``block`` images at a time into the one float16 array written.
    """
    from vqa.grid_features import IMPORTED_LAYER, grid_path, write_grids

    height, width, channels = (int(size) for size in grid_shape)
    spec = random_grid_spec(channels)
    write_synthetic_out(out_dir, num_questions, num_images, backbone=spec, seed=seed)
    rng = np.random.default_rng([seed, 1])
    grids = np.empty((num_images, height, width, channels), np.float16)
    for start in range(0, num_images, block):
        count = min(block, num_images - start)
        grids[start:start + count] = np.maximum(rng.standard_normal((count, height, width, channels),
                                                                    dtype=np.float32), 0)
    write_grids(grid_path(out_dir / SPLIT), np.arange(num_images, dtype=np.int64), grids, spec, IMPORTED_LAYER)
    return out_dir


def bench_grid_backbone(sizes: Sizes, work: Path):
    """``bench_backbone_spec``'s backbone with its grid output too: VGG-16 fc7 and ``block5_pool`` from one
    forward pass (seeded random weights), or the quick run's small CNN and its last 4-D layer."""
    from vqa.backbone import load_backbone

    if sizes.backbone == "vgg16":
        return load_backbone("none", grid_layer="auto")
    return load_backbone(bench_backbone_spec(sizes, work).weights, grid_layer="auto")
