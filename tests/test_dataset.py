"""vqa.dataset: reading a preprocessed directory and feeding batches to Keras.

``write_tiny_out`` builds a tiny OUT in the DESIGN.md layout directly with h5py/json; the
train tests reuse it. Its image features carry the answer (each image's colour and a
yes/no bit are one-hot blocks of the feature vector), so a model that sees the image can
answer every question while a blind one cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from vqa import dataset
from vqa.errors import VQAError

ANSWERS = ["yes", "no", "red", "blue", "green"]
WORDS = ["<pad>", "<unk>", "what", "color", "is", "it", "red", "?"]
MAX_LENGTH = 6
FEATURE_DIM = 12
COLOR_QUESTION = [2, 3, 4, 5, 7, 0]  # what color is it ?
RED_QUESTION = [4, 5, 6, 7, 0, 0]  # is it red ?


def _write_split(split_dir: Path, num_images: int, num_questions: int, seed: int, missing: int = 0,
                 unanswerable: int = 0) -> None:
    """One split: images with a colour, half colour questions, half "is it red?".

    The last ``missing`` questions point at no image (-1); the ``unanswerable`` questions
    before them have no vocabulary answer.
    """
    rng = np.random.default_rng(seed)
    colors = rng.integers(2, 5, size=num_images)  # answer class of "what color is it?"
    features = rng.normal(0, 0.05, size=(num_images, FEATURE_DIM))
    features[np.arange(num_images), colors] += 1.0  # columns 2..4: the colour
    features[:, 8] += 0.5  # a shared offset, so no row is all noise
    image_index = np.arange(num_questions) % num_images
    is_color = np.arange(num_questions) % 2 == 0
    token_ids = np.where(is_color[:, None], COLOR_QUESTION, RED_QUESTION).astype(np.int32)
    answer_index = np.where(is_color, colors[image_index], np.where(colors[image_index] == 2, 0, 1))
    score_indices = np.full((num_questions, 10), -1, np.int32)
    score_values = np.zeros((num_questions, 10), np.float32)
    score_indices[:, 0] = answer_index
    score_values[:, 0] = 1.0
    # A minority human answer: colour questions name another colour with 0.3 credit.
    other = np.where(answer_index == 4, 3, 4)
    score_indices[is_color, 1] = other[is_color]
    score_values[is_color, 1] = 0.3
    if unanswerable:
        rows = slice(num_questions - missing - unanswerable, num_questions - missing)
        answer_index[rows] = -1
        score_indices[rows] = -1
        score_values[rows] = 0.0
    if missing:
        image_index[num_questions - missing:] = -1
    split_dir.mkdir(parents=True)
    image_ids = 1000 + np.arange(num_images, dtype=np.int64)
    with h5py.File(split_dir / "questions.h5", "w") as f:
        question_ids = np.arange(num_questions, dtype=np.int64) + seed * 100_000
        f["question_ids"] = question_ids
        f["image_ids"] = np.where(image_index >= 0, image_ids[np.maximum(image_index, 0)], 999)
        f["token_ids"] = token_ids
        f["image_index"] = image_index.astype(np.int32)
        f["answer_index"] = answer_index.astype(np.int32)
        f["score_indices"] = score_indices
        f["score_values"] = score_values
        f.attrs["has_annotations"] = True
    with h5py.File(split_dir / "image_features.h5", "w") as f:
        f["image_ids"] = image_ids
        f["features"] = features.astype(np.float16)
        f.attrs["backbone"] = json.dumps({"name": "test"})
    types = ["other" if color else "yes/no" for color in is_color]
    (split_dir / "answer_types.txt").write_text("".join(t + "\n" for t in types), encoding="utf-8")


def write_tiny_out(out_dir: Path, train_questions: int = 64, val_questions: int = 32) -> Path:
    """A preprocessed directory with splits train2014 (with 2 missing images and 2
    unanswerable questions) and val2014 (1 missing image)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_split(out_dir / "train2014", 16, train_questions, seed=1, missing=2, unanswerable=2)
    _write_split(out_dir / "val2014", 8, val_questions, seed=2, missing=1)
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, size=(len(WORDS), 6)).astype(np.float32)
    vectors[:2] = 0.0
    with h5py.File(out_dir / "embeddings.h5", "w") as f:
        f["vectors"] = vectors
    (out_dir / "answers.json").write_text(json.dumps({"answers": ANSWERS, "counts": [9] * len(ANSWERS)}))
    (out_dir / "vocab.json").write_text(json.dumps({"words": WORDS}))
    (out_dir / "backbone.json").write_text(json.dumps({"name": "test"}))
    splits = {name: {"questions_file": "/nowhere", "annotations_file": None, "num_questions": n,
                     "num_images": m, "num_missing_images": k, "missing_image_ids": []}
              for name, n, m, k in (("train2014", train_questions, 16, 2), ("val2014", val_questions, 8, 1))}
    info = {"format_version": 1, "data_dir": "/nowhere", "vectors": "test", "lang": "en",
            "max_question_length": MAX_LENGTH, "top_answers": len(ANSWERS), "first_split": "train2014",
            "backbone": {"name": "test"}, "feature_dim": FEATURE_DIM, "splits": splits}
    (out_dir / "preprocess.json").write_text(json.dumps(info))
    return out_dir


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    return write_tiny_out(tmp_path_factory.mktemp("out"))


def test_load_split_holds_features_once_in_stored_dtype(tiny_out):
    data = dataset.load_split(tiny_out, "train2014")
    assert data.num_questions == 64 and data.max_length == MAX_LENGTH and data.feature_dim == FEATURE_DIM
    assert data.image_features.dtype == np.float16
    assert data.image_features.nbytes == 16 * FEATURE_DIM * 2  # one row per image, not per question
    assert data.answer_types[:2] == ["other", "yes/no"]

    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True)
    assert batches.data.image_features is data.image_features  # shared, never copied per question


def test_gather_features_matches_rows_and_zeros_missing_images():
    features = np.arange(12, dtype=np.float16).reshape(4, 3)
    gathered = dataset.gather_features(features, np.array([2, -1, 0, 2]))
    assert gathered.dtype == np.float16  # stored dtype; the model's input casts
    np.testing.assert_array_equal(gathered, [[6, 7, 8], [0, 0, 0], [0, 1, 2], [6, 7, 8]])
    assert features[0].tolist() == [0, 1, 2]  # zeroing the missing row (read from row 0) leaves the source alone


def test_dense_scores_from_sparse_scores():
    indices = np.array([[2, 0, -1], [-1, -1, -1]])
    values = np.array([[1.0, 0.3, 0.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(dataset.dense_scores(indices, values, 4), [[0.3, 0, 1.0, 0], [0, 0, 0, 0]])


def test_training_batches_leave_out_missing_images_and_unanswerable(tiny_out):
    data = dataset.load_split(tiny_out, "train2014")
    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True, seed=3)
    assert (batches.num_samples, batches.num_missing_images, batches.num_without_answer) == (60, 2, 2)
    assert len(batches) == 8

    inputs, targets = batches[0]
    rows = batches.batch_rows(0)
    assert inputs["question_ids"].dtype == np.int32 and inputs["question_ids"].shape == (8, MAX_LENGTH)
    assert inputs["image_features"].dtype == data.image_features.dtype
    assert inputs["image_features"].shape == (8, FEATURE_DIM)
    np.testing.assert_array_equal(inputs["image_features"], data.image_features[data.image_index[rows]])
    assert targets.shape == (8, len(ANSWERS))
    np.testing.assert_allclose(targets.max(axis=1), 1.0)  # every kept question has its answer

    softmax = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), loss="softmax", training=True)
    _, classes = softmax[0]
    assert classes.shape == (8,) and (classes >= 0).all()


def test_shuffle_depends_only_on_seed_and_epoch(tiny_out):
    data = dataset.load_split(tiny_out, "train2014")

    def order(seed, epoch):
        batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True, seed=seed)
        batches.set_epoch(epoch)
        return np.concatenate([batches.batch_rows(i) for i in range(len(batches))])

    np.testing.assert_array_equal(order(0, 1), order(0, 1))
    assert not np.array_equal(order(0, 1), order(0, 2))
    assert not np.array_equal(order(0, 1), order(1, 1))
    assert sorted(order(0, 1)) == sorted(order(0, 2))  # each question once per epoch


def test_evaluation_keeps_every_question_in_order(tiny_out):
    data = dataset.load_split(tiny_out, "val2014")
    batches = dataset.QuestionBatches(data, batch_size=10, num_answers=len(ANSWERS), with_targets=False,
                                      include_images=True)
    assert batches.num_samples == 32 and batches.num_missing_images == 1
    last = batches[len(batches) - 1]
    assert set(last) == {"question_ids", "image_features"} and len(last["question_ids"]) == 2
    assert not last["image_features"][-1].any()  # the missing image is a zero vector
    blind = dataset.QuestionBatches(data, batch_size=10, num_answers=len(ANSWERS), with_targets=False,
                                    include_images=False, limit=5)
    assert set(blind[0]) == {"question_ids"} and blind.num_samples == 5


def test_not_preprocessed_directory_is_a_clear_error(tmp_path, tiny_out):
    with pytest.raises(VQAError, match="vqa preprocess"):
        dataset.load_split(tmp_path, "train2014")
    with pytest.raises(VQAError, match="vqa preprocess"):
        dataset.load_split(tmp_path / "absent", "train2014")
    with pytest.raises(VQAError, match="test2015.*train2014, val2014"):
        dataset.load_split(tiny_out, "test2015")
    old = tmp_path / "old"
    old.mkdir()
    (old / "preprocess.json").write_text(json.dumps({"format_version": 0, "splits": {}}))
    with pytest.raises(VQAError, match="format version 0"):
        dataset.read_preprocess_info(old)


def test_vocabularies_and_embeddings(tiny_out):
    assert dataset.load_answers(tiny_out) == ANSWERS
    assert dataset.load_vocab(tiny_out) == WORDS
    vectors = dataset.load_embeddings(tiny_out)
    assert vectors.shape == (len(WORDS), 6) and vectors.dtype == np.float32 and not vectors[:2].any()


def test_last_batch_padded_for_even_sharding(tiny_out):
    """JAX data parallelism needs equal shards: padding repeats a question with weight 0."""
    data = dataset.load_split(tiny_out, "train2014")
    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True, batch_multiple=3)
    inputs, targets, weights = batches[len(batches) - 1]  # 60 questions: the last batch has 4, padded to 6
    assert len(inputs["question_ids"]) == len(targets) == 6
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(inputs["question_ids"][4], inputs["question_ids"][3])
    _, _, full = batches[0]
    assert len(full) == 9 and full[:8].all() and not full[8]
