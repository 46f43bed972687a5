"""spaCy pipelines with word vectors made from files: GloVe / word2vec text, and the stand-in.

``--vectors`` takes a spaCy pipeline (``vqa.text.load_pipeline``) or a word-vector text
file: GloVe (``word v1 v2 ...`` per line) or word2vec/fastText text (the same after a
``count dim`` header line), optionally ``.gz`` or ``.zip``. Such a file is read and checked
here (every line a word and the same number of finite values, as many lines as a header
promises: a cut-off download or a NaN row is refused, naming the 1-based line), then given
to spaCy's ``Vectors`` as ``spacy init vectors`` does, and written into a pipeline folder in
the cache (``$VQA_CACHE``, else ``$XDG_CACHE_HOME/vqa``, else ``~/.cache/vqa``), keyed by the
file's path, size and modification time; later runs load the cached folder. The folder is
written atomically and only after the checks pass, so a bad file is never cached.

The file is read line by line, so its size bounds the memory conversion takes; that size
is checked first (``VECTORS_MAX_BYTES``), and so are the two ways a small file could still ask
for much more: a first line with no end (a file of zero bytes) and a word2vec header that
claims more vectors than the file can hold.

``make_vectors_pipeline`` writes the STAND-IN pipeline the demo and the tests use where
en_core_web_lg cannot be downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

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
# Part of the cache key: conversions made before the checks of this version are made (and checked) again.
_CONVERSION_VERSION = 2
_FIX = "fix the file or download it again, or pass a spaCy pipeline"


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
    from spacy.vectors import Vectors

    path = Path(path).resolve()
    _check_size_and_header(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{lang}\0{spacy.__version__}\0"
                         f"{_CONVERSION_VERSION}".encode())
    target = cache_root() / "vectors" / f"{path.stem}-{key.hexdigest()[:16]}"
    if (target / "config.cfg").is_file():
        return target
    data, words = read_text_vectors(path)
    nlp = spacy.blank(lang)
    for word in words:  # what spacy.training.initialize.convert_vectors does with what it read
        nlp.vocab[word]
    nlp.vocab.vectors = Vectors(strings=nlp.vocab.strings, data=data, keys=words, attr="ORTH")
    nlp.vocab.deduplicate_vectors()
    nlp.vocab.vectors.name = f"{nlp.meta['lang']}_{nlp.meta['name']}.vectors"
    nlp.meta["vectors"]["name"] = nlp.vocab.vectors.name
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
            raise VQAError(f"--vectors {path}: its header (line 1) promises {count} vectors of {dim} values, more "
                           f"than its {size_text(size)} of text can hold, so it is cut off or its header is wrong; "
                           "download it again or fix the first line (count dim).")


def read_text_vectors(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """The vectors of a GloVe or word2vec text file, checked line by line.

    Lines are read as spaCy's ``spacy init vectors`` reads them: the word, then the values split
    from the right on single spaces (so a word may hold spaces); blank lines are passed over.

    Returns:
        (float32 (rows, dim), the rows' words).

    Raises:
        VQAError: the file is empty or unreadable, a line has another number of values than the
            first (or the header) or a value that is no number, a vector holds NaN or inf, or
            the header promises another number of vectors than the file holds; naming the
            file's 1-based line.
    """
    path = Path(path)
    first = next(_numbered_lines(path), None)
    if first is None:
        raise VQAError(f"--vectors {path} is empty; pass a file of 'word v1 v2 ...' lines or a spaCy pipeline.")
    fields = first[1].split()
    header = len(fields) == 2 and all(field.isdigit() for field in fields)
    if header:
        rows, dim = int(fields[0]), int(fields[1])
        said = "the header (line 1) says"
    else:
        rows, dim = sum(1 for _ in _numbered_lines(path)), len(fields) - 1
        said = "the first line has"
    if dim < 1 or rows < 1:
        raise VQAError(f"--vectors {path} holds no word vectors (line 1 is {_shown(first[1])}); pass a file of "
                       "'word v1 v2 ...' lines or a spaCy pipeline.")
    data = np.zeros((rows, dim), dtype=np.float32)
    words: list[str] = []
    for line_number, line in _numbered_lines(path):
        if header and line_number == 1:
            continue
        where = f"--vectors {path} line {line_number} ({_shown(line)})"
        if len(words) == rows:
            raise VQAError(f"{where} is one line more than the {rows} vectors {said}; {_FIX}.")
        pieces = line.rsplit(" ", dim)
        if len(pieces) != dim + 1:
            raise VQAError(f"{where} has {len(pieces) - 1} numbers after its word, not {dim} as {said}; {_FIX}.")
        try:
            vector = np.asarray(pieces[1:], dtype=np.float32)
        except ValueError:
            bad = next((piece for piece in pieces[1:] if not _is_number(piece)), pieces[1])
            raise VQAError(f"{where} holds {bad!r} where a number should be; {_FIX}.") from None
        if not np.isfinite(vector).all():
            raise VQAError(f"--vectors {path} has NaN or inf in the vector of {pieces[0]!r} on line {line_number}; "
                           f"{_FIX}.")
        data[len(words)] = vector
        words.append(pieces[0])
    if len(words) < rows:
        raise VQAError(f"--vectors {path}: its header (line 1) promises {rows} vectors but the file ends after "
                       f"{len(words)}, so it is cut off; download it again.")
    return data, words


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line end and trailing blanks) of the non-blank lines of a text,
    .gz or .zip (its first member) file, or one sentence when it cannot be read as UTF-8 text."""
    import gzip
    import zipfile

    try:
        if path.suffix.lower() == ".gz":
            handle = gzip.open(path, "rt", encoding="utf-8")
        elif path.suffix.lower() == ".zip":
            archive = zipfile.ZipFile(path)
            handle = io.TextIOWrapper(archive.open(archive.namelist()[0]), encoding="utf-8")
        else:
            handle = path.open(encoding="utf-8")
        with handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.rstrip()
                if line:
                    yield line_number, line
    except UnicodeDecodeError:
        raise VQAError(f"--vectors {path} is not UTF-8 text; pass a GloVe or word2vec text file (not a binary one) "
                       "or a spaCy pipeline.") from None
    except (OSError, EOFError, IndexError, zipfile.BadZipFile) as error:
        raise VQAError(f"--vectors {path} could not be read as UTF-8 GloVe or word2vec text ({brief(error)}); pass "
                       "a file of 'word v1 v2 ...' lines or a spaCy pipeline.") from None


def _shown(line: str) -> str:
    return repr(line if len(line) <= 40 else line[:37] + "...")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
