"""``OUT/preprocess.json``: what a preprocessed folder holds, and how it was made.

Written by ``vqa.preprocess`` after each step it finishes (a split is listed only once
all its files are written), read by everything that uses OUT: training, evaluation,
reports, the benchmark. ``load_manifest`` is the check that OUT is preprocessed data of
this version.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa.errors import VQAError
from vqa.records import record_from_dict, record_to_dict
from vqa.storage import read_json, write_json

FORMAT_VERSION = 1
FILENAME = "preprocess.json"


@dataclass(frozen=True)
class SplitRecord:
    """One preprocessed split.

    Attributes:
        num_questions: questions kept (the text files and the question arrays have this many rows).
        num_images: images with a feature row (with ``--features grid``, which writes no feature
            file, images with a grid).
        num_missing_images: images missing or unreadable, skipped.
        missing_image_ids: the first few of those.
        questions_without_image: questions whose image has no feature row.
        unknown_tokens: tokens outside the vocabulary.
        truncated_questions: questions longer than the maximum length.
        answer_coverage: share of questions with a vocabulary answer (None without annotations).
        skipped_questions: questions left out of every file of the split, because they or their annotation
            were bad items of the official files (``vqa.sources``).
        skipped_examples: the first few bad items, each "question 5000: answers is an empty list".
        num_grid_images: images with a grid-feature row, extracted or imported (0 without grid features).
        num_region_images: images with imported region features (0 without them).
        has_annotations: False for test splits.
        questions_file, annotations_file: the official files read (absolute paths).
        images_dir: the image root the features came from.
        seconds: how long the split took.
    """

    num_questions: int
    num_images: int
    num_missing_images: int = 0
    missing_image_ids: tuple[int, ...] = ()
    questions_without_image: int = 0
    unknown_tokens: int = 0
    truncated_questions: int = 0
    answer_coverage: float | None = None
    skipped_questions: int = 0
    skipped_examples: tuple[str, ...] = ()
    num_grid_images: int = 0
    num_region_images: int = 0
    has_annotations: bool = True
    questions_file: str | None = None
    annotations_file: str | None = None
    images_dir: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Manifest:
    """The whole preprocessed folder: settings, vocabularies, backbone and splits."""

    format_version: int = FORMAT_VERSION
    splits: dict[str, SplitRecord] = field(default_factory=dict)
    data_dir: str | None = None
    config: dict[str, Any] | None = None
    vectors: str | None = None
    lang: str = "en"
    first_split: str | None = None
    max_question_length: int | None = None
    top_answers: int | None = None
    vocabulary_size: int = 0
    embedding_dim: int = 0
    oov_words: int = 0
    oov_examples: tuple[str, ...] = ()
    num_answers: int = 0
    backbone: dict[str, Any] | None = None
    feature_dim: int | None = None

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def with_split(self, split: str, record: SplitRecord) -> "Manifest":
        return dataclasses.replace(self, splits={**self.splits, split: record})


def manifest_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / FILENAME


def write_manifest(out_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``OUT/preprocess.json`` atomically."""
    write_json(manifest_path(out_dir), record_to_dict(manifest))


def read_manifest(out_dir: str | os.PathLike) -> Manifest | None:
    """The manifest of ``out_dir``, or None when it has none yet.

    Raises:
        VQAError: the file is not JSON, not a manifest, or of another format version.
    """
    path = manifest_path(out_dir)
    if not path.exists():
        return None
    data = read_json(path, "preprocessing record")
    advice = f"run `vqa preprocess` again into a new --out folder (or delete {path})"
    if not isinstance(data, dict):
        raise VQAError(f"{path} holds a JSON {type(data).__name__}, not a preprocessing record; {advice}.")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise VQAError(f"{path} has format version {version}, this vqa reads version {FORMAT_VERSION}: "
                       f"run `vqa preprocess` again into {Path(out_dir)}.")
    splits = data.get("splits", {})
    if not isinstance(splits, dict):
        raise VQAError(f"{path} has no object 'splits'; {advice}.")
    records = {str(name): record_from_dict(SplitRecord, entry, f"{path} (split {name})", advice)
               for name, entry in splits.items()}
    manifest = record_from_dict(Manifest, {**data, "splits": {}}, str(path), advice)
    return dataclasses.replace(manifest, splits=records)


def load_manifest(out_dir: str | os.PathLike) -> Manifest:
    """Read ``OUT/preprocess.json``, checking that OUT is preprocessed data of this version.

    Raises:
        VQAError: when OUT is missing, not preprocessed, or of another format version.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise VQAError(f"preprocessed directory {out_dir} does not exist: run `vqa preprocess` to make it.")
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise VQAError(f"{out_dir} is not a preprocessed directory (no {FILENAME}): "
                       "run `vqa preprocess` to make it.")
    return manifest


def require_split(out_dir: str | os.PathLike, manifest: Manifest, split: str) -> SplitRecord:
    """The record of ``split``, or one sentence saying how to preprocess it."""
    if split not in manifest.splits:
        known = ", ".join(sorted(manifest.splits)) or "none"
        raise VQAError(
            f"split {split!r} was not preprocessed into {out_dir} (it holds: {known}): "
            f"run `vqa preprocess --splits {split} --out {out_dir}`, or choose another split."
        )
    return manifest.splits[split]
