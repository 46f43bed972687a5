"""spaCy pipelines with word vectors made from files: GloVe / word2vec text, and the stand-in.

``--vectors`` takes a spaCy pipeline (``vqa.text.load_pipeline``) or a word-vector text
file: GloVe (``word v1 v2 ...`` per line) or word2vec/fastText text (the same after a
``count dim`` header line), optionally ``.gz`` or ``.zip``. Such a file is converted once,
through spaCy's own vectors initialisation (what ``spacy init vectors`` runs), into a
pipeline folder in the cache (``$VQA_CACHE``, else ``$XDG_CACHE_HOME/vqa``, else
``~/.cache/vqa``), keyed by the file's path, size and modification time; later runs load
the cached folder.

spaCy reads the file line by line, so its size bounds the memory conversion takes; that size
is checked first (``VECTORS_MAX_BYTES``), and so are the two ways a small file could still ask
for much more: a first line with no end (a file of zero bytes) and a word2vec header that
claims more vectors than the file can hold.

``make_vectors_pipeline`` writes the STAND-IN pipeline the demo and the tests use where
en_core_web_lg cannot be downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from vqa.bounded_read import check_size, size_text
from vqa.errors import VQAError, brief

TEXT_SUFFIXES = (".txt", ".vec", ".gz", ".zip")
# The most bytes a vectors file can hold: the biggest common one, GloVe 840B, is 5.6 GB of text;
# 16 GB leaves room for a bigger one and still refuses a disk image given by mistake.
VECTORS_MAX_BYTES = 16 << 30
# The longest first line read: a 300-d GloVe line is about 3 KB, a word2vec header a few bytes.
FIRST_LINE_MAX_BYTES = 1 << 20
# The fewest bytes a vector's value takes in text ("0" and a space), to check a header's claim.
MIN_BYTES_PER_VALUE = 2


def is_vectors_file(name_or_path: str | os.PathLike) -> bool:
    """Whether ``--vectors`` names a word-vector text file rather than a spaCy pipeline."""
    path = Path(name_or_path)
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def cache_root() -> Path:
    """Where converted vector files are kept."""
    if os.environ.get("VQA_CACHE"):
        return Path(os.environ["VQA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vqa"


def text_vectors_pipeline(path: str | os.PathLike, lang: str = "en") -> Path:
    """The cached spaCy pipeline of a GloVe or word2vec text file, converted on first use.

    Args:
        path: the vectors file.
        lang: the spaCy language whose tokenizer the pipeline gets.

    Returns:
        The pipeline folder (``spacy.load`` reads it).

    Raises:
        VQAError: the file cannot be read as word vectors.
    """
    import spacy
    from spacy.training.initialize import convert_vectors

    path = Path(path).resolve()
    _check_size_and_header(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{lang}\0{spacy.__version__}".encode())
    target = cache_root() / "vectors" / f"{path.stem}-{key.hexdigest()[:16]}"
    if (target / "config.cfg").is_file():
        return target
    nlp = spacy.blank(lang)
    try:
        convert_vectors(nlp, path, truncate=0, prune=-1)
    except Exception as error:  # spaCy and numpy raise ValueError, IndexError, UnicodeDecodeError, ...
        raise VQAError(f"--vectors {path} could not be read as GloVe or word2vec text vectors "
                       f"({type(error).__name__}: {brief(error)}); pass a file of 'word v1 v2 ...' lines "
                       "or a spaCy pipeline.") from None
    if nlp.vocab.vectors_length == 0 or nlp.vocab.vectors.n_keys == 0:
        raise VQAError(f"--vectors {path} holds no word vectors; pass a file of 'word v1 v2 ...' lines.")
    _write_pipeline(nlp, target)
    return target


def _check_size_and_header(path: Path) -> None:
    """Refuse a vectors file whose conversion would need far more memory than real vectors do."""
    size = check_size(path, VECTORS_MAX_BYTES, "--vectors")
    suffix = path.suffix.lower()
    try:
        if suffix == ".zip":
            import zipfile

            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                if not members:
                    return  # spaCy's own sentence names an empty archive
                size = members[0].file_size
                if size > VECTORS_MAX_BYTES:
                    raise VQAError(f"--vectors {path} unpacks to {size_text(size)}, over its limit of "
                                   f"{size_text(VECTORS_MAX_BYTES)}; is it the right file?")
                with archive.open(members[0]) as f:
                    first = f.readline(FIRST_LINE_MAX_BYTES)
        elif suffix == ".gz":
            size = VECTORS_MAX_BYTES  # gzip does not say how much it unpacks to
            with gzip.open(path, "rb") as f:
                first = f.readline(FIRST_LINE_MAX_BYTES)
        else:
            with path.open("rb") as f:
                first = f.readline(FIRST_LINE_MAX_BYTES)
    except (OSError, EOFError, ValueError):
        return  # unreadable: spaCy's conversion says why in its own sentence
    if len(first) == FIRST_LINE_MAX_BYTES and not first.endswith(b"\n"):
        raise VQAError(f"--vectors {path} has a first line over {size_text(FIRST_LINE_MAX_BYTES)} long; pass a "
                       "file of 'word v1 v2 ...' lines.")
    fields = first.split()
    if len(fields) == 2 and all(field.isdigit() for field in fields):
        count, dim = int(fields[0]), int(fields[1])
        if count * dim * MIN_BYTES_PER_VALUE > size:
            raise VQAError(f"--vectors {path} says it holds {count} vectors of {dim} values, more than "
                           f"{size_text(size)} of text can; fix the first line (count dim) or pass another file.")


def make_vectors_pipeline(words: Iterable[str], out_dir: str | os.PathLike, dim: int = 300,
                          seed: int = 0) -> Path:
    """Write a STAND-IN spaCy pipeline with a vector for each word.

    This replaces en_core_web_lg where it cannot be downloaded (the demo and the
    tests). Its vectors are pseudo-random, fixed per (seed, word): they carry no
    semantics beyond word identity, so a model trained with them learns nothing
    from vector similarity that real GloVe-style vectors would give it.

    Args:
        words: words to give a vector (duplicates and empty strings are ignored).
        out_dir: folder to write (``spacy.load(out_dir)`` and ``load_pipeline``
            read it); replaced if it already holds a pipeline.
        dim: vector width.
        seed: changes every vector.

    Returns:
        ``out_dir`` as a Path.
    """
    import spacy

    out_dir = Path(out_dir)
    words = [word for word in dict.fromkeys(words) if word]
    nlp = spacy.blank("en")
    nlp.vocab.vectors.resize((len(words), dim))
    for word in words:
        nlp.vocab.set_vector(word, _stand_in_vector(word, dim, seed))
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.cfg").is_file():
        raise VQAError(f"folder {out_dir} exists and is not a spaCy pipeline; choose another folder for the vectors.")
    _write_pipeline(nlp, out_dir)
    return out_dir


def _write_pipeline(nlp, out_dir: Path) -> None:
    """``nlp.to_disk`` beside ``out_dir``, then renamed onto it: a killed run never leaves half a pipeline."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        nlp.to_disk(tmp_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _stand_in_vector(word: str, dim: int, seed: int) -> np.ndarray:
    word_key = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, word_key]).standard_normal(dim).astype(np.float32)
