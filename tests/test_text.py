"""Questions -> tokens -> ids, the vocabulary file, word vectors and the stand-in vectors pipeline."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import spacy

from vqa import text, vectors
from vqa.errors import VQAError

WORDS = ["what", "color", "is", "the", "dog", "?", "Dog"]


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory):
    return vectors.make_vectors_pipeline(WORDS, tmp_path_factory.mktemp("vectors") / "pipeline", dim=8, seed=3)


@pytest.fixture(scope="module")
def nlp(vectors_dir):
    return text.load_pipeline(str(vectors_dir))


def test_tokenize_lower_cases_splits_punctuation_and_drops_whitespace(nlp):
    questions = ["What's  the color of the DOG?\n", "Is this a t-shirt?", "", "How many U.S. flags?"]

    assert text.tokenize(nlp, questions) == [
        ["what", "'s", "the", "color", "of", "the", "dog", "?"],
        ["is", "this", "a", "t", "-", "shirt", "?"],
        [],
        ["how", "many", "u.s.", "flags", "?"],
    ]


def test_saved_tokenizer_tokenises_exactly_like_the_pipeline_even_with_custom_rules(nlp, tmp_path):
    from spacy.symbols import ORTH

    questions = ["What's in the man's hand?", "Don't you see 3,000 cars; e.g. Nike's?", "Is it 5.5 ft. tall?",
                 "Is the tv on?"]
    nlp.tokenizer.add_special_case("tv", [{ORTH: "t"}, {ORTH: "v"}])  # a rule no blank pipeline has
    expected = text.tokenize(nlp, questions)
    assert expected[3] == ["is", "the", "t", "v", "on", "?"]

    text.write_tokenizer(tmp_path, nlp)
    assert text.tokenize(text.read_tokenizer(tmp_path, "en"), questions) == expected
    assert text.tokenize(text.blank_tokenizer("en"), questions) != expected
    text.tokenizer_path(tmp_path).write_bytes(b"\x00garbage")
    with pytest.raises(VQAError, match="could not be read"):
        text.read_tokenizer(tmp_path, "en")
    with pytest.raises(VQAError, match="does not exist"):
        text.read_tokenizer(tmp_path / "absent", "en")


def test_tokenize_runs_only_the_tokenizer_and_is_fast():
    nlp = text.blank_tokenizer()
    questions = [f"What color is the shirt of man number {i} on the left?" for i in range(20_000)]

    start = time.perf_counter()
    tokens = text.tokenize(nlp, questions)
    elapsed = time.perf_counter() - start

    assert tokens[7] == ["what", "color", "is", "the", "shirt", "of", "man", "number", "7", "on", "the", "left", "?"]
    # ~100,000 questions/s on the development machine; 5,000/s leaves room for a busy CI box.
    assert elapsed < 4.0


def test_build_vocabulary_puts_specials_first_then_count_then_alphabet():
    token_lists = [["is", "the", "dog", "?"], ["is", "the", "cat", "?"], ["what", "is", "it", "?"], ["<unk>"]]

    words = text.build_vocabulary(token_lists)

    # is: 3, ?: 3, the: 2, then the count-1 words alphabetically; "?" sorts before "is".
    assert words == ["<pad>", "<unk>", "?", "is", "the", "cat", "dog", "it", "what"]
    assert text.build_vocabulary(token_lists, min_count=2) == ["<pad>", "<unk>", "?", "is", "the"]


def test_vocabulary_round_trip_and_bad_files(tmp_path):
    words = ["<pad>", "<unk>", "is", "dog"]
    text.write_vocabulary(tmp_path, words)

    assert json.loads((tmp_path / "vocab.json").read_text()) == {"words": words}
    assert text.read_vocabulary(tmp_path) == words
    with pytest.raises(VQAError, match="does not exist"):
        text.read_vocabulary(tmp_path / "missing")
    (tmp_path / "vocab.json").write_text('{"words": ["is", "dog"]}')
    with pytest.raises(VQAError, match="vocab.json is not a vocabulary"):
        text.read_vocabulary(tmp_path)
    (tmp_path / "vocab.json").write_text('{"words": ["<pad>", "<un')
    with pytest.raises(VQAError, match="not valid JSON"):
        text.read_vocabulary(tmp_path)


def test_token_ids_pad_truncate_and_map_unknown_words():
    index = text.word_index(["<pad>", "<unk>", "is", "the", "dog"])
    token_lists = [["is", "the", "dog"], ["is", "the", "zebra", "the", "dog"], [], ["dog"]]

    ids, num_truncated = text.token_ids(token_lists, index, max_length=4)

    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [[2, 3, 4, 0], [2, 3, 1, 3], [0, 0, 0, 0], [4, 0, 0, 0]])
    assert num_truncated == 1


def test_embedding_matrix_rows_are_the_pipeline_vectors(nlp):
    words = ["<pad>", "<unk>", "dog", "zebra", "what", "Dog"]

    matrix, oov = text.embedding_matrix(nlp, words)

    assert matrix.shape == (6, 8) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[:2], 0)
    np.testing.assert_array_equal(matrix[2], nlp.vocab.get_vector("dog"))
    np.testing.assert_array_equal(matrix[4], nlp.vocab.get_vector("what"))
    np.testing.assert_array_equal(matrix[3], 0)
    assert oov == ["zebra"]
    assert not np.array_equal(matrix[2], matrix[5])  # vectors are keyed by the exact string


def test_embeddings_round_trip_and_bad_files(tmp_path):
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    text.write_embeddings(tmp_path, matrix)

    np.testing.assert_array_equal(text.read_embeddings(tmp_path), matrix)
    with pytest.raises(VQAError, match="does not exist"):
        text.read_embeddings(tmp_path / "missing")
    with h5py.File(tmp_path / "embeddings.h5", "w") as f:
        f["weights"] = matrix
    with pytest.raises(VQAError, match="no 2-D dataset 'vectors'"):
        text.read_embeddings(tmp_path)
    (tmp_path / "embeddings.h5").write_bytes(b"not hdf5")
    with pytest.raises(VQAError, match="not a readable HDF5"):
        text.read_embeddings(tmp_path)


def test_stand_in_pipeline_loads_with_spacy_load_and_is_deterministic_per_word(vectors_dir, tmp_path):
    loaded = spacy.load(vectors_dir)
    other = spacy.load(vectors.make_vectors_pipeline(["dog", "cat"], tmp_path / "other", dim=8, seed=3))
    reseeded = spacy.load(vectors.make_vectors_pipeline(["dog"], tmp_path / "reseeded", dim=8, seed=4))

    assert loaded.vocab.vectors.shape == (len(WORDS), 8)
    assert all(loaded.vocab.has_vector(word) for word in WORDS)
    # A word's vector depends on the word and the seed only, not on the other words.
    np.testing.assert_array_equal(loaded.vocab.get_vector("dog"), other.vocab.get_vector("dog"))
    assert not np.array_equal(loaded.vocab.get_vector("dog"), reseeded.vocab.get_vector("dog"))
    assert "stand-in" in vectors.make_vectors_pipeline.__doc__.lower()


def test_load_pipeline_excludes_every_component(tmp_path):
    full = spacy.blank("en")
    full.add_pipe("sentencizer")
    full.vocab.set_vector("dog", np.ones(4, dtype=np.float32))
    full.to_disk(tmp_path / "full")

    nlp = text.load_pipeline(str(tmp_path / "full"))

    assert nlp.pipe_names == [] and nlp.component_names == []
    np.testing.assert_array_equal(nlp.vocab.get_vector("dog"), np.ones(4))


def test_unknown_pipeline_name_says_how_to_install_it():
    with pytest.raises(VQAError, match=r"'en_core_web_xx_missing' is not installed.*spacy download en_core_web_xx_missing"
                                       r".*--vectors PATH"):
        text.load_pipeline("en_core_web_xx_missing")


def test_pipeline_without_vectors_is_an_error(tmp_path):
    spacy.blank("en").to_disk(tmp_path / "novectors")

    with pytest.raises(VQAError, match="has no word vectors"):
        text.load_pipeline(str(tmp_path / "novectors"))


GLOVE = "dog 0.1 0.2 0.3 0.4\ncat -1 0 1 2\nwhat 5 5 5 5\n"


@pytest.mark.parametrize("name, content", [("glove.6B.4d.txt", GLOVE), ("model.vec", "3 4\n" + GLOVE)])
def test_glove_and_word2vec_text_files_become_cached_pipelines(tmp_path, monkeypatch, name, content):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / name
    path.write_text(content)

    nlp = text.load_pipeline(str(path))
    matrix, oov = text.embedding_matrix(nlp, ["<pad>", "<unk>", "dog", "cat", "what", "zebra"])
    np.testing.assert_array_equal(matrix[2:5], np.float32([[0.1, 0.2, 0.3, 0.4], [-1, 0, 1, 2], [5, 5, 5, 5]]))
    assert oov == ["zebra"] and matrix.dtype == np.float32
    assert len(list((tmp_path / "cache" / "vectors").iterdir())) == 1

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached pipeline should have been used")

    monkeypatch.setattr(vectors, "read_text_vectors", no_second_conversion)
    again = text.load_pipeline(str(path))
    np.testing.assert_array_equal(text.embedding_matrix(again, ["dog"])[0], np.float32([[0.1, 0.2, 0.3, 0.4]]))


def test_a_malformed_vectors_file_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.txt"
    path.write_text("dog 0.1 0.2\ncat 1 two three\n")
    with pytest.raises(VQAError, match=r"--vectors .*broken.txt line 2 \('cat 1 two three'\) holds 'two' where a "
                                       r"number should be"):
        text.load_pipeline(str(path))


def _refused(path, monkeypatch, tmp_path) -> str:
    """The one sentence ``load_pipeline`` refuses ``path`` with; checks that nothing was cached."""
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(VQAError) as caught:
        text.load_pipeline(str(path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    cached = tmp_path / "cache" / "vectors"
    assert not cached.exists() or not any(cached.iterdir()), list(cached.iterdir())
    return message


def test_a_vectors_file_with_a_nan_row_is_refused_and_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE.replace("cat -1 0 1 2", "cat -1 nan 1 2"))
    message = _refused(path, monkeypatch, tmp_path)
    assert "NaN or inf in the vector of 'cat' on line 2" in message


def test_a_cut_off_word2vec_file_is_refused_and_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "cut.vec"
    path.write_text("26 4\n" + GLOVE)  # a header promising 26 vectors over the 3 of a cut-off download
    message = _refused(path, monkeypatch, tmp_path)
    assert "header (line 1) promises 26 vectors" in message and "cut off" in message and "again" in message


def test_a_word2vec_file_cut_off_after_a_plausible_header_is_refused_by_its_rows(tmp_path, monkeypatch):
    """The header's count fits the file's size, so only counting the rows read finds the missing one."""
    path = tmp_path / "cut.vec"
    path.write_text("4 4\n" + GLOVE.replace(" 0 ", " 0.000000 "))
    message = _refused(path, monkeypatch, tmp_path)
    assert "header (line 1) promises 4 vectors but the file ends after 3" in message and "again" in message


@pytest.mark.parametrize("content", [GLOVE + "sun 1 2\nmoon 1 2 3 4\n",  # GloVe: the fourth line is short
                                     "5 4\n" + GLOVE.replace("what", "sun 1 2\nwhat")])  # word2vec: header first
def test_a_short_line_is_named_by_its_line_number_in_the_file(tmp_path, monkeypatch, content):
    path = tmp_path / "short.txt"
    path.write_text(content)
    message = _refused(path, monkeypatch, tmp_path)
    assert "line 4 ('sun 1 2') has 2 numbers after its word, not 4" in message, message
    assert "E094" not in message and "line 3" not in message


def test_an_empty_or_non_numeric_vectors_file_is_one_sentence(tmp_path, monkeypatch):
    (tmp_path / "empty.txt").write_text("")
    message = _refused(tmp_path / "empty.txt", monkeypatch, tmp_path)
    assert "is empty" in message and "StopIteration" not in message
    (tmp_path / "words.txt").write_text("dog 0.1 0.2\ncat 1 two 3\n")
    message = _refused(tmp_path / "words.txt", monkeypatch, tmp_path)
    assert "line 2 ('cat 1 two 3') holds 'two' where a number should be" in message
