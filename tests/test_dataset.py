"""vqa.dataset: reading a preprocessed directory and feeding batches to Keras.

``helpers.write_tiny_out`` builds a tiny OUT with the pipeline's own writers; its image
features carry the answer, so a model that sees the image can answer every question
while a blind one cannot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vqa import answers, dataset, manifest, text, visual
from vqa.errors import VQAError
from vqa.names import IMAGE_FEATURES, QUESTION_IDS
from vqa.visual.vector import VectorReader

from helpers import ANSWERS, FEATURE_DIM, MAX_LENGTH, WORDS, write_tiny_out


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    return write_tiny_out(tmp_path_factory.mktemp("out"))


def test_load_split_holds_features_once_in_stored_dtype(tiny_out):
    data = dataset.load_split(tiny_out, "train2014", "fc7")
    assert data.num_questions == 64 and data.max_length == MAX_LENGTH and data.feature_dim == FEATURE_DIM
    assert data.source == "fc7" and data.spec == visual.VisualSpec("vector", (FEATURE_DIM,))
    assert data.grid_shape is None and not data.visual.streamed
    assert data.visual.vectors.dtype == np.float16
    assert data.visual.vectors.nbytes == 16 * FEATURE_DIM * 2  # one row per image, not per question
    assert data.answer_types[:2] == ["other", "yes/no"]

    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True)
    assert batches.data.visual.vectors is data.visual.vectors  # shared, never copied per question


def test_vector_reads_match_rows_and_zero_missing_images():
    features = np.arange(12, dtype=np.float16).reshape(4, 3)
    reader = VectorReader(np.arange(4), features)
    gathered = reader.read(np.array([2, -1, 0, 2]))[IMAGE_FEATURES]
    assert gathered.dtype == np.float16  # stored dtype; the model's input casts
    np.testing.assert_array_equal(gathered, [[6, 7, 8], [0, 0, 0], [0, 1, 2], [6, 7, 8]])
    assert features[0].tolist() == [0, 1, 2]  # zeroing the missing row (read from row 0) leaves the source alone


def test_rows_are_looked_up_by_image_id_in_the_file_read():
    file_ids = np.array([30, 10, 20])
    np.testing.assert_array_equal(visual.rows_for(np.array([10, 20, 10, 99, 30]), file_ids), [1, 2, 1, -1, 0])
    assert visual.rows_for(np.array([10, 20]), np.array([], np.int64)).tolist() == [-1, -1]
    padded = visual.pad_inputs({QUESTION_IDS: np.ones((2, 3), np.int32), IMAGE_FEATURES: np.ones((2, 4))}, 5)
    assert padded[QUESTION_IDS].shape == (5, 3) and not padded[QUESTION_IDS][2:].any()
    assert padded[IMAGE_FEATURES].shape == (5, 4) and padded[IMAGE_FEATURES][:2].all()


def test_a_split_loaded_without_an_image_input_yields_questions_only(tiny_out):
    data = dataset.load_split(tiny_out, "train2014", None)
    assert data.visual is None and data.spec is None and data.feature_dim == 0 and data.grid_shape is None
    assert (data.image_index == 0).all()  # no image input, so no question misses its image
    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True)
    assert batches.num_missing_images == 0 and batches.num_samples == 62  # only the unanswerable are left out
    inputs, _ = batches[0]
    assert set(inputs) == {QUESTION_IDS}
    data.close()  # a no-op without an input


def test_a_source_whose_file_the_split_lacks_is_one_sentence(tiny_out):
    with pytest.raises(VQAError, match="has no grid_features.h5, which data.features=grid .*pick another"):
        dataset.load_split(tiny_out, "train2014", "grid")
    with pytest.raises(VQAError, match="data.features must be one of auto, fc7"):
        dataset.load_split(tiny_out, "train2014", "pool5")


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
    assert inputs[QUESTION_IDS].dtype == np.int32 and inputs[QUESTION_IDS].shape == (8, MAX_LENGTH)
    assert inputs[IMAGE_FEATURES].dtype == data.visual.vectors.dtype
    assert inputs[IMAGE_FEATURES].shape == (8, FEATURE_DIM)
    np.testing.assert_array_equal(inputs[IMAGE_FEATURES], data.visual.vectors[data.image_index[rows]])
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
    assert set(last) == {QUESTION_IDS, IMAGE_FEATURES} and len(last[QUESTION_IDS]) == 2
    assert not last[IMAGE_FEATURES][-1].any()  # the missing image is a zero vector
    blind = dataset.QuestionBatches(data, batch_size=10, num_answers=len(ANSWERS), with_targets=False,
                                    include_images=False, limit=5)
    assert set(blind[0]) == {QUESTION_IDS} and blind.num_samples == 5


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
        dataset.load_split(old, "train2014")
    (old / "preprocess.json").write_text("[]")
    with pytest.raises(VQAError, match="JSON list"):
        dataset.load_split(old, "train2014")


def test_vocabularies_and_embeddings_round_trip_through_their_owners(tiny_out):
    assert answers.read_answers(tiny_out) == ANSWERS
    assert text.read_vocabulary(tiny_out) == WORDS
    vectors = text.read_embeddings(tiny_out)
    assert vectors.shape == (len(WORDS), 6) and vectors.dtype == np.float32 and not vectors[:2].any()
    record = manifest.load_manifest(tiny_out)
    assert record.splits["train2014"].num_questions == 64 and record.feature_dim == FEATURE_DIM


def test_damaged_split_files_are_named(tiny_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_out, out)
    questions = out / "train2014" / "questions.h5"
    questions.write_bytes(questions.read_bytes()[:300])  # a copy cut short
    with pytest.raises(VQAError, match="questions.h5 is not a readable question file"):
        dataset.load_split(out, "train2014")


def test_last_batch_padded_for_even_sharding(tiny_out):
    """JAX data parallelism needs equal shards: padding repeats a question with weight 0."""
    data = dataset.load_split(tiny_out, "train2014")
    batches = dataset.QuestionBatches(data, batch_size=8, num_answers=len(ANSWERS), training=True, batch_multiple=3)
    inputs, targets, weights = batches[len(batches) - 1]  # 60 questions: the last batch has 4, padded to 6
    assert len(inputs[QUESTION_IDS]) == len(targets) == 6
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(inputs[QUESTION_IDS][4], inputs[QUESTION_IDS][3])
    _, _, full = batches[0]
    assert len(full) == 9 and full[:8].all() and not full[8]
