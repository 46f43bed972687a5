"""Questions to token ids, and the word vectors that initialise the embedding.

Owns three files of a preprocessed folder OUT, copied into every run folder RUN:
``vocab.json`` (token id -> word), ``embeddings.h5`` (one word vector per token id,
read when a model is built) and ``tokenizer.msgpack`` (the pipeline's tokenizer in
spaCy's own serialisation). Tokens come from a spaCy pipeline loaded with its
tokenizer and vectors only: the tagger, parser and NER would cost most of the time
and add nothing a bag of token ids can use.

Predict and serve load the saved tokenizer, so a new question is split exactly as
the training questions were, without loading the large vectors table.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vqa.errors import VQAError, brief
from vqa.storage import atomic_path, open_h5, read_json, write_json

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
SPECIAL_WORDS = (PAD, UNK)

DEFAULT_PIPELINE = "en_core_web_lg"
VOCABULARY_FILE = "vocab.json"
EMBEDDINGS_FILE = "embeddings.h5"
TOKENIZER_FILE = "tokenizer.msgpack"


def vocabulary_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / VOCABULARY_FILE


def embeddings_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / EMBEDDINGS_FILE


def tokenizer_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / TOKENIZER_FILE


def has_vocabularies(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the vocabulary, embeddings and tokenizer a first split writes."""
    return all(path.is_file() for path in (vocabulary_path(folder), embeddings_path(folder), tokenizer_path(folder)))


# --- spaCy pipelines -------------------------------------------------------------------------------


def load_pipeline(name_or_path: str):
    """Load a spaCy pipeline for its tokenizer and word vectors only.

    Every pipeline component (tagger, parser, NER, ...) is excluded, so nothing
    but the tokenizer runs and loading is quick.

    Args:
        name_or_path: an installed package name (``"en_core_web_lg"``), the
            folder of a pipeline saved with ``nlp.to_disk``, or a GloVe / word2vec
            text file (converted once and cached: ``vqa.vectors``).

    Returns:
        The ``spacy.Language``; its ``vocab.vectors`` holds the word vectors.

    Raises:
        VQAError: the pipeline is not installed, cannot be read, or has no vectors.
    """
    import spacy

    from vqa import vectors as vectors_lib

    name_or_path = str(name_or_path)
    if vectors_lib.is_vectors_file(name_or_path):
        name_or_path = str(vectors_lib.text_vectors_pipeline(name_or_path))
    try:
        nlp = spacy.load(name_or_path, exclude=_component_names(name_or_path))
    except OSError as error:
        if not Path(name_or_path).exists() and not spacy.util.is_package(name_or_path):
            raise VQAError(
                f"spaCy pipeline {name_or_path!r} is not installed: install it with "
                f"`python -m spacy download {name_or_path}`, or pass --vectors PATH to a pipeline "
                "saved with word vectors."
            ) from None
        raise VQAError(f"spaCy pipeline {name_or_path!r} could not be loaded ({brief(error)}); "
                       "install it again or pass --vectors PATH to another pipeline.") from None
    # A pipeline whose meta.json does not list every component still loads them: drop them here.
    for component in list(nlp.component_names):
        nlp.remove_pipe(component)
    if nlp.vocab.vectors_length == 0 or nlp.vocab.vectors.n_keys == 0:
        raise VQAError(
            f"spaCy pipeline {name_or_path!r} has no word vectors (sm pipelines ship none): use "
            "en_core_web_lg or pass --vectors PATH to a pipeline saved with vectors."
        )
    return nlp


def _component_names(name_or_path: str) -> list[str]:
    """Names of all components a pipeline would load, read from its meta.json (best effort)."""
    import spacy

    meta_path = None
    if Path(name_or_path).is_dir():
        meta_path = Path(name_or_path) / "meta.json"
    else:
        with contextlib.suppress(Exception):
            if spacy.util.is_package(name_or_path):
                meta_path = spacy.util.get_package_path(name_or_path) / "meta.json"
    if meta_path is None or not meta_path.is_file():
        return []
    try:
        meta = spacy.util.load_meta(meta_path)
    except Exception:
        return []
    return list(dict.fromkeys([*meta.get("components", []), *meta.get("pipeline", [])]))


def blank_tokenizer(lang: str = "en"):
    """A blank spaCy pipeline of ``lang``: the language's default tokenizer rules, no vectors.

    For listing the words of questions before any pipeline exists (the demo's and the
    tests' stand-in vectors); a run tokenises with the saved tokenizer instead.
    """
    import spacy

    return spacy.blank(lang)


def write_tokenizer(folder: str | os.PathLike, nlp) -> None:
    """Save ``nlp``'s tokenizer (rules, exceptions, prefixes, suffixes, infixes) into ``folder``.

    spaCy's ``Tokenizer.to_disk`` writes its own msgpack format: data, never code.
    """
    with atomic_path(tokenizer_path(folder)) as tmp:
        nlp.tokenizer.to_disk(tmp)


def read_tokenizer(folder: str | os.PathLike, lang: str = "en"):
    """The tokenizer saved by ``write_tokenizer``, in a blank pipeline of language ``lang``.

    Returns:
        A ``spacy.Language`` with no components that tokenises exactly as the
        preprocessing pipeline did.

    Raises:
        VQAError: the file is missing or unreadable, or ``lang`` is not a spaCy language.
    """
    import spacy

    path = tokenizer_path(folder)
    if not path.is_file():
        raise VQAError(f"tokenizer {path} does not exist; run `vqa preprocess` again (and train the run again) "
                       "with this version of vqa.")
    try:
        nlp = spacy.blank(lang)
    except Exception:  # spaCy raises ImportError or its own error for an unknown language code
        raise VQAError(f"{folder} records spaCy language {lang!r}, which this spaCy does not know; "
                       "preprocess again.") from None
    try:
        nlp.tokenizer.from_disk(path)
    except Exception as error:  # msgpack and spaCy raise their own types for a damaged file
        raise VQAError(f"tokenizer {path} could not be read ({brief(error)}); run `vqa preprocess` again.") from None
    return nlp


def copy_tokenizer(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the tokenizer of folder ``source`` into folder ``target``."""
    with atomic_path(tokenizer_path(target)) as tmp:
        shutil.copyfile(tokenizer_path(source), tmp)


def tokenize(nlp, questions: Sequence[str], batch_size: int = 1000) -> list[list[str]]:
    """Split questions into lower-cased tokens.

    Only the tokenizer runs, even for a full pipeline. Whitespace tokens (from
    double spaces or newlines) are dropped; punctuation is kept as tokens.

    Args:
        nlp: a spaCy pipeline (``load_pipeline`` or ``tokenizer``).
        questions: N question strings.
        batch_size: texts per tokenizer batch.

    Returns:
        N lists of token strings, e.g. "What's this?" -> ["what", "'s", "this", "?"].
    """
    # VQA repeats many questions word for word ("What color is the ...?"): tokenise each text once.
    unique = list(dict.fromkeys(questions))
    tokens_of = {question: [token.lower_ for token in doc if not token.is_space]
                 for question, doc in zip(unique, nlp.tokenizer.pipe(unique, batch_size=batch_size))}
    return [list(tokens_of[question]) for question in questions]


# --- vocabulary and token ids ----------------------------------------------------------------------


def build_vocabulary(token_lists: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """Word list indexed by token id.

    Args:
        token_lists: tokenised questions (usually the training split's).
        min_count: words seen fewer times than this map to ``<unk>``.

    Returns:
        ``["<pad>", "<unk>", *words]`` with words by count, most frequent first,
        ties in alphabetical order (so the same data always gives the same ids).
    """
    counts = collections.Counter(token for tokens in token_lists for token in tokens)
    for special in SPECIAL_WORDS:
        counts.pop(special, None)
    words = sorted((word for word, count in counts.items() if count >= min_count),
                   key=lambda word: (-counts[word], word))
    return [PAD, UNK, *words]


def write_vocabulary(folder: str | os.PathLike, words: Sequence[str]) -> None:
    """Write ``{"words": [...]}`` into ``folder`` atomically."""
    write_json(vocabulary_path(folder), {"words": list(words)})


def read_vocabulary(folder: str | os.PathLike) -> list[str]:
    """Read the vocabulary written by ``write_vocabulary``: list index = token id.

    Raises:
        VQAError: the file is missing, is not JSON, or is not a vocabulary.
    """
    path = vocabulary_path(folder)
    data = read_json(path, "vocabulary file")
    words = data.get("words") if isinstance(data, dict) else None
    if (not isinstance(words, list) or len(words) < 2 or not all(isinstance(w, str) for w in words)
            or words[PAD_ID] != PAD or words[UNK_ID] != UNK):
        raise VQAError(f"vocabulary file {path} is not a vocabulary ({{\"words\": [\"{PAD}\", \"{UNK}\", ...]}}); "
                       "run preprocessing again.")
    if len(set(words)) != len(words):
        raise VQAError(f"vocabulary file {path} lists a word twice; run preprocessing again.")
    return words


def copy_vocabulary(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the vocabulary of folder ``source`` into folder ``target``, checking it on the way."""
    write_vocabulary(target, read_vocabulary(source))


def word_index(words: Sequence[str]) -> dict[str, int]:
    """word -> token id for ``token_ids``."""
    return {word: index for index, word in enumerate(words)}


def token_ids(token_lists: Sequence[Sequence[str]], word_index: Mapping[str, int],
              max_length: int) -> tuple[np.ndarray, int]:
    """Map tokenised questions to fixed-length id rows.

    Args:
        token_lists: N tokenised questions.
        word_index: word -> id; words not in it become ``<unk>`` (1).
        max_length: L, the row length; longer questions keep their first L tokens.

    Returns:
        (ids, num_truncated): ids int32 (N, L) post-padded with ``<pad>`` (0), and
        how many questions were longer than L.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    ids = np.zeros((len(token_lists), max_length), dtype=np.int32)
    num_truncated = 0
    for row, tokens in enumerate(token_lists):
        if len(tokens) > max_length:
            num_truncated += 1
            tokens = tokens[:max_length]
        ids[row, :len(tokens)] = [word_index.get(token, UNK_ID) for token in tokens]
    return ids, num_truncated


# --- word vectors ----------------------------------------------------------------------------------


def embedding_matrix(nlp, words: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Word vectors aligned with the vocabulary.

    Args:
        nlp: a pipeline with vectors (``load_pipeline``).
        words: the vocabulary, ``words[0] == "<pad>"``, ``words[1] == "<unk>"``.

    Returns:
        (matrix, oov): matrix float32 (V, dim) whose row i is the vector of
        ``words[i]``; rows of the special words and of words without a vector
        (``oov``, in vocabulary order) stay zero.
    """
    vocab = nlp.vocab
    matrix = np.zeros((len(words), vocab.vectors_length), dtype=np.float32)
    oov = []
    for row, word in enumerate(words):
        if word in SPECIAL_WORDS:
            continue
        if vocab.has_vector(word):
            matrix[row] = np.asarray(vocab.get_vector(word), dtype=np.float32)
        else:
            oov.append(word)
    return matrix, oov


def write_embeddings(folder: str | os.PathLike, matrix: np.ndarray) -> None:
    """Write the embedding matrix into ``folder`` as HDF5 dataset "vectors" float32 (V, dim), atomically."""
    with atomic_path(embeddings_path(folder)) as tmp:
        with open_h5(tmp, "w") as f:
            f.create_dataset("vectors", data=np.asarray(matrix, dtype=np.float32))


def read_embeddings(folder: str | os.PathLike) -> np.ndarray:
    """Read the matrix written by ``write_embeddings``: float32 (V, dim).

    Raises:
        VQAError: the file is missing, unreadable, or has no 2-D "vectors" dataset.
    """
    import h5py

    path = embeddings_path(folder)
    if not path.is_file():
        raise VQAError(f"embeddings file {path} does not exist; run preprocessing first.")
    try:
        with h5py.File(path, "r") as f:
            vectors = f.get("vectors")
            if not isinstance(vectors, h5py.Dataset) or vectors.ndim != 2:
                raise VQAError(f"embeddings file {path} has no 2-D dataset 'vectors'; run preprocessing again.")
            return np.asarray(vectors[...], dtype=np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise VQAError(f"embeddings file {path} is not a readable HDF5 file ({brief(error)}); "
                       "run preprocessing again.") from None
