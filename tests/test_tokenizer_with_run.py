"""A run carries the tokenizer it was trained with: predict splits new questions exactly as preprocessing did.

On every question of the real VQA v2 sample, with a vectors pipeline whose tokenizer has
rules a blank English pipeline lacks, so a predict that rebuilt its tokenizer would differ.
"""

import json

import numpy as np
import pytest
import spacy
from spacy.symbols import ORTH

from helpers import preprocess
from vqa import split_files, text
from vqa.config import Config, DataConfig, ModelConfig, TrainConfig

pytestmark = pytest.mark.slow  # preprocessing and one tiny epoch: ~10 s


def _questions(raw, split):
    return [q["question"] for q in json.loads((raw / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
            ["questions"]]


def test_predict_gives_the_token_ids_preprocessing_stored(real_sample_official_layout, tiny_backbone,
                                                          vectors_factory, tmp_path):
    from vqa.predict import Predictor
    from vqa.train import train

    raw = real_sample_official_layout
    splits = ("train2014", "val2014")
    questions = {split: _questions(raw, split) for split in splits}
    words = {t for split in splits for tokens in text.tokenize(text.blank_tokenizer("en"), questions[split])
             for t in tokens} | {"player", "s", "base", "ball"}
    nlp = spacy.load(vectors_factory(words))
    # Rules of this pipeline only: "players" -> player s, "baseball" -> base ball.
    nlp.tokenizer.add_special_case("players", [{ORTH: "player"}, {ORTH: "s"}])
    nlp.tokenizer.add_special_case("baseball", [{ORTH: "base"}, {ORTH: "ball"}])
    vectors = tmp_path / "custom_vectors"
    nlp.to_disk(vectors)

    out = tmp_path / "processed"
    preprocess(raw, out, splits, vectors=str(vectors), weights=str(tiny_backbone))
    config = Config(data=DataConfig(data_dir=str(out), val_split=""),
                    model=ModelConfig(name="question-only", lstm_units=4, lstm_layers=1, hidden_units=4),
                    train=TrainConfig(epochs=1, batch_size=8))
    train(out, tmp_path / "run", config, log=lambda message: None)

    predictor = Predictor(tmp_path / "run")
    for split in splits:
        stored = split_files.read_questions(out / split).token_ids
        encoded, _ = predictor.encode(questions[split])
        assert len(stored) == len(questions[split]) > 0
        np.testing.assert_array_equal(encoded, stored, err_msg=split)

    # The same questions through a blank English tokenizer give other ids: the check above can fail.
    vocabulary = text.word_index(text.read_vocabulary(out))
    assert "player" in vocabulary and "players" not in vocabulary
    train_ids = split_files.read_questions(out / "train2014").token_ids
    blank_ids, _ = text.token_ids(text.tokenize(text.blank_tokenizer("en"), questions["train2014"]), vocabulary,
                                  train_ids.shape[1])
    assert not np.array_equal(blank_ids, train_ids)
