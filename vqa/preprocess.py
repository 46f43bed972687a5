"""Official VQA v2 JSON + COCO images -> everything training and evaluation read.

Reads, under ``--data-dir``:
    v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json
    (where the split has them; also accepted in a ``<split>/`` subfolder), and images
    ``<image root>/<folder>/COCO_<folder>_<image_id:012d>.jpg`` (or flat in the root).

Writes, under ``--out`` (the layout ``vqa.dataset`` reads):
    preprocess.json          settings, backbone and what each split holds; a split is
                             listed only once all its files are written
    answers.json             the answer vocabulary (first split, official normalisation)
    vocab.json, embeddings.h5  question vocabulary (first split) and its word vectors
    backbone.json [+ .keras] the image backbone, so predict can run it on new images
    <split>/questions.txt, question_ids.txt, image_ids.txt, answers.txt,
            answer_types.txt, question_types.txt   one line per question
    <split>/questions.h5     token ids, image rows, answer targets (see DESIGN in README)
    <split>/image_features.h5  one feature row per readable image

Every file is written atomically and feature extraction resumes where a killed run
stopped, so running the same command again after any interruption finishes the job.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from vqa import answers as answers_lib
from vqa import text as text_lib
from vqa.config import FORMAT_VERSION
from vqa.errors import VQAError
from vqa.progress import progress
from vqa.storage import atomic_path, open_h5, read_json, write_json, write_lines

IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test-dev2015": "test2015", "test2015": "test2015"}
MAX_ANSWERS = 10  # human answers per question in VQA v2
SHOWN_IDS = 5  # how many ids a report names before "..."


def image_folder(split: str) -> str:
    """The COCO image folder of a VQA split (test-dev2015 questions use test2015 images)."""
    return IMAGE_FOLDERS.get(split, split)


def image_filename(split: str, image_id: int) -> str:
    folder = image_folder(split)
    return f"COCO_{folder}_{int(image_id):012d}.jpg"


def questions_filename(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_filename(split: str) -> str:
    return f"v2_mscoco_{split}_annotations.json"


def _find(data_dir: Path, split: str, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / split / name):
        if candidate.is_file():
            return candidate
    return None


def _name_ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:SHOWN_IDS])
    return shown + (", ..." if len(ids) > SHOWN_IDS else "")


@dataclass
class SplitSource:
    """One split's questions joined with their annotations, in question-file order."""

    split: str
    questions_file: Path
    annotations_file: Path | None
    questions: list[dict]
    annotations: list[dict | None]
    notes: list[str] = field(default_factory=list)

    @property
    def has_annotations(self) -> bool:
        return self.annotations_file is not None


QUESTION_FIELDS = {"image_id": int, "question": str, "question_id": int}
ANNOTATION_FIELDS = {"question_id": int, "answers": list, "multiple_choice_answer": str}


def _check_entries(entries: object, fields: dict[str, type], path: Path, what: str) -> list[dict]:
    """Check that ``entries`` is a list of dicts whose ``fields`` have the official types."""
    if not isinstance(entries, list):
        raise VQAError(f"{path}: '{what}' must be a list; is this an official VQA v2 file?")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(key not in entry for key in fields):
            missing = [key for key in fields if not isinstance(entry, dict) or key not in entry]
            raise VQAError(f"{path}: {what}[{position}] lacks {', '.join(missing)}; is this an official VQA v2 file?")
        for key, kind in fields.items():
            value = entry[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise VQAError(f"{path}: {what}[{position}] has {key} {value!r}, not {_KIND_NAMES[kind]}; "
                               "is this an official VQA v2 file?")
    return entries


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}


def _duplicates(entries: list[dict], path: Path) -> None:
    counts: dict[int, int] = {}
    for entry in entries:
        counts[entry["question_id"]] = counts.get(entry["question_id"], 0) + 1
    duplicated = [qid for qid, count in counts.items() if count > 1]
    if duplicated:
        raise VQAError(
            f"{path}: {len(duplicated)} question ids appear more than once ({_name_ids(duplicated)}); "
            "the file is corrupt: download it again."
        )


def load_split(data_dir: Path, split: str, limit: int | None = None) -> SplitSource:
    """Read and join one split's official question and annotation files.

    Args:
        data_dir: folder holding the official JSON files.
        split: e.g. "train2014", "val2014", "test-dev2015".
        limit: keep only the first ``limit`` questions.

    Returns:
        The split's questions with their annotation (None where the split has none).
    """
    questions_path = _find(data_dir, split, questions_filename(split))
    if questions_path is None:
        raise VQAError(
            f"{data_dir / questions_filename(split)} does not exist: put the official VQA v2 question file for "
            f"{split} there (make download fetches it), or pass --data-dir."
        )
    data = read_json(questions_path, "questions file")
    if not isinstance(data, dict) or "questions" not in data:
        raise VQAError(f"{questions_path} has no 'questions' list; is it an official VQA v2 questions file?")
    questions = _check_entries(data["questions"], QUESTION_FIELDS, questions_path, "questions")
    _duplicates(questions, questions_path)
    if limit:
        questions = questions[:limit]

    annotations_path = _find(data_dir, split, annotations_filename(split))
    source = SplitSource(split, questions_path, annotations_path, questions, [None] * len(questions))
    if annotations_path is None:
        source.notes.append(f"{split}: no annotation file, so questions only (like test-dev)")
        return source
    data = read_json(annotations_path, "annotations file")
    if not isinstance(data, dict) or "annotations" not in data:
        raise VQAError(f"{annotations_path} has no 'annotations' list; is it an official VQA v2 annotations file?")
    entries = _check_entries(data["annotations"], ANNOTATION_FIELDS, annotations_path, "annotations")
    _duplicates(entries, annotations_path)
    by_id = {entry["question_id"]: entry for entry in entries}
    joined = [by_id.get(q["question_id"]) for q in questions]
    unannotated = [q["question_id"] for q, a in zip(questions, joined) if a is None]
    if unannotated:
        raise VQAError(
            f"{annotations_path} has no annotation for {len(unannotated)} questions of {questions_path.name} "
            f"({_name_ids(unannotated)}); the two files do not belong together."
        )
    if not limit:
        asked = {q["question_id"] for q in questions}
        orphans = [qid for qid in by_id if qid not in asked]
        if orphans:
            source.notes.append(
                f"{split}: {len(orphans)} annotations have no question and were ignored ({_name_ids(orphans)})"
            )
    for annotation in joined:
        if not isinstance(annotation["answers"], list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in annotation["answers"]
        ):
            raise VQAError(
                f"{annotations_path}: question {annotation['question_id']} has malformed 'answers' "
                "(expected a list of {{answer, answer_confidence, answer_id}})."
            )
    source.annotations = joined
    return source


def _one_line(value: object) -> str:
    return str(value).replace("\r", " ").replace("\n", " ").replace("\t", " ")


def write_text_files(out_split: Path, source: SplitSource) -> None:
    """The seed pipeline's text files: one line per question, in question-file order."""
    columns = {
        "questions.txt": [q["question"] for q in source.questions],
        "question_ids.txt": [q["question_id"] for q in source.questions],
        "image_ids.txt": [q["image_id"] for q in source.questions],
        "answers.txt": [a["multiple_choice_answer"] if a else "" for a in source.annotations],
        "answer_types.txt": [a.get("answer_type", "") if a else "" for a in source.annotations],
        "question_types.txt": [a.get("question_type", "") if a else "" for a in source.annotations],
    }
    for name, values in columns.items():
        write_lines(out_split / name, (_one_line(v) for v in values))


def answer_targets(source: SplitSource, answer_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per question: the class of its multiple-choice answer and the official score of each class.

    Returns:
        answer_index int32 (N,), -1 outside the vocabulary or without annotations;
        score_indices int32 (N, 10), -1 padded; score_values float32 (N, 10), 0 padded.
    """
    count = len(source.questions)
    mc_index = np.full(count, -1, np.int32)
    score_indices = np.full((count, MAX_ANSWERS), -1, np.int32)
    score_values = np.zeros((count, MAX_ANSWERS), np.float32)
    if not source.has_annotations:
        return mc_index, score_indices, score_values
    for row, annotation in enumerate(progress(source.annotations, desc=f"{source.split} answers", unit="q")):
        mc_index[row] = answers_lib.multiple_choice_index(annotation["multiple_choice_answer"], answer_index)
        human = [entry["answer"] for entry in annotation["answers"]]
        for column, (index, value) in enumerate(answers_lib.answer_scores(human, answer_index)[:MAX_ANSWERS]):
            score_indices[row, column] = index
            score_values[row, column] = value
    return mc_index, score_indices, score_values


def _write_questions_h5(path: Path, source: SplitSource, token_ids: np.ndarray, image_index: np.ndarray,
                        targets: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    mc_index, score_indices, score_values = targets
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as f:
            f.create_dataset("question_ids", data=np.array([q["question_id"] for q in source.questions], np.int64))
            f.create_dataset("image_ids", data=np.array([q["image_id"] for q in source.questions], np.int64))
            f.create_dataset("token_ids", data=token_ids.astype(np.int32), compression="gzip", compression_opts=1)
            f.create_dataset("image_index", data=image_index.astype(np.int32))
            f.create_dataset("answer_index", data=mc_index)
            f.create_dataset("score_indices", data=score_indices, compression="gzip", compression_opts=1)
            f.create_dataset("score_values", data=score_values, compression="gzip", compression_opts=1)
            f.attrs["has_annotations"] = source.has_annotations
            f.attrs["split"] = source.split


def image_path(images_root: Path, split: str, image_id: int) -> Path:
    """Where a split's image lives: ``root/<folder>/COCO_...jpg`` as the zips unpack, or flat in ``root``."""
    nested = Path(images_root) / image_folder(split)
    base = nested if nested.is_dir() else Path(images_root)
    return base / image_filename(split, image_id)


def _image_paths(images_root: Path, split: str, image_ids: Sequence[int]) -> list[tuple[int, Path]]:
    return [(image_id, image_path(images_root, split, image_id)) for image_id in image_ids]


class Preprocessor:
    """Runs the steps for each split, reusing the first split's vocabularies for later ones."""

    def __init__(self, data_dir: Path, out_dir: Path, *, vectors: str, weights: str, images_dir: Path | None,
                 limit: int | None, top_answers: int, max_question_length: int, batch_size: int,
                 feature_dtype: str, features_mat: Path | None, id_map: Path | None, seed: int,
                 log: Callable[[str], None]):
        self.data_dir, self.out_dir = data_dir, out_dir
        self.vectors, self.weights = vectors, weights
        self.images_dir = images_dir or data_dir
        self.limit, self.top_answers, self.max_question_length = limit, top_answers, max_question_length
        self.batch_size, self.feature_dtype, self.seed = batch_size, feature_dtype, seed
        self.features_mat, self.id_map = features_mat, id_map
        self.log = log
        self.manifest_path = out_dir / "preprocess.json"
        self.manifest = self._read_manifest()
        self._nlp = None
        self._backbone = None

    # -- manifest -------------------------------------------------------------------------------------------

    def _read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"format_version": FORMAT_VERSION, "splits": {}}
        manifest = read_json(self.manifest_path, "preprocess manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise VQAError(
                f"{self.manifest_path} was written by another version of vqa (format "
                f"{manifest.get('format_version')}); preprocess into a new --out folder."
            )
        for key, value in (("max_question_length", self.max_question_length), ("top_answers", self.top_answers)):
            if key in manifest and manifest[key] != value:
                option = "--" + key.replace("_", "-")
                raise VQAError(
                    f"{self.out_dir} was preprocessed with {option} {manifest[key]}; pass the same value "
                    f"to add splits to it, or use a new --out folder."
                )
        return manifest

    def _save_manifest(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # -- vocabularies ---------------------------------------------------------------------------------------

    @property
    def nlp(self):
        if self._nlp is None:
            self.log(f"Loading spaCy pipeline {self.vectors} (tokenizer and vectors only)")
            self._nlp = text_lib.load_pipeline(self.vectors)
        return self._nlp

    def _vocabularies_exist(self) -> bool:
        return all((self.out_dir / name).exists() for name in ("answers.json", "vocab.json", "embeddings.h5")) \
            and "first_split" in self.manifest

    def build_vocabularies(self, source: SplitSource, tokens: list[list[str]]) -> dict:
        """Answer and word vocabularies and the embedding matrix, from the first split."""
        if not source.has_annotations:
            raise VQAError(
                f"{source.split} has no annotations, so it cannot define the answer vocabulary; list a split "
                "with annotations first in --splits (e.g. train2014,{source.split})."
            )
        answers, counts = answers_lib.answer_vocabulary([a for a in source.annotations], self.top_answers)
        answers_lib.write_answers(self.out_dir / "answers.json", answers, counts)
        words = text_lib.build_vocabulary(tokens)
        matrix, oov = text_lib.embedding_matrix(self.nlp, words)
        text_lib.write_embeddings(self.out_dir / "embeddings.h5", matrix)
        text_lib.write_vocabulary(self.out_dir / "vocab.json", words)
        self.manifest.update(
            first_split=source.split, vectors=self.vectors, lang=self.nlp.lang,
            max_question_length=self.max_question_length, top_answers=self.top_answers,
            vocabulary_size=len(words), embedding_dim=int(matrix.shape[1]),
            oov_words=len(oov), oov_examples=oov[:20], num_answers=len(answers),
        )
        self._save_manifest()
        self.log(
            f"Vocabularies from {source.split}: {len(answers)} answers, {len(words)} words "
            f"({len(oov)} without a vector in {self.vectors}), {matrix.shape[1]}-d vectors"
        )
        return {"oov_words": len(oov)}

    # -- image features -------------------------------------------------------------------------------------

    @property
    def backbone(self):
        if self._backbone is None:
            from vqa import features as features_lib

            self._backbone = features_lib.load_backbone(self.weights, seed=self.seed)
            spec = self._backbone.spec.to_dict()
            recorded = self.manifest.get("backbone")
            if recorded and recorded != spec:
                raise VQAError(
                    f"{self.out_dir} holds features from another backbone ({recorded.get('kind')}, weights "
                    f"{recorded.get('weights')}); pass the same --weights or use a new --out folder."
                )
            if spec.get("kind") == "keras":
                with atomic_path(self.out_dir / "backbone.keras") as tmp:
                    shutil.copyfile(self.weights, tmp)
            write_json(self.out_dir / "backbone.json", spec)
            self.manifest.update(backbone=spec, feature_dim=int(self._backbone.feature_dim))
            self._save_manifest()
        return self._backbone

    def image_features(self, source: SplitSource, out_split: Path):
        from vqa import features as features_lib

        image_ids = list(dict.fromkeys(q["image_id"] for q in source.questions))
        out_path = out_split / "image_features.h5"
        if self.features_mat:
            result = features_lib.import_mat_features(
                self.features_mat, self.id_map, image_ids, out_path, dtype=self.feature_dtype
            )
            with h5py.File(out_path, "r") as f:
                feature_dim = int(f["features"].shape[1])
            # Imported features come with no model that could describe a new image.
            spec = {"kind": "mat", "weights": str(self.features_mat.resolve()), "feature_dim": feature_dim}
            write_json(self.out_dir / "backbone.json", spec)
            self.manifest.update(backbone=spec, feature_dim=feature_dim)
            return result
        paths = _image_paths(self.images_dir, source.split, image_ids)
        self.log(f"{source.split}: image features for {len(paths)} images ({self.backbone.spec.kind}, "
                 f"weights {self.weights})")
        return features_lib.extract_features(
            paths, self.backbone, out_path, batch_size=self.batch_size, dtype=self.feature_dtype
        )

    # -- one split ------------------------------------------------------------------------------------------

    def run_split(self, split: str, defines_vocabulary: bool) -> dict:
        started = time.monotonic()
        source = load_split(self.data_dir, split, self.limit)
        for note in source.notes:
            self.log(note)
        if not self.features_mat:
            _ = self.backbone  # a missing or wrong backbone stops the run now, not after the text steps
        out_split = self.out_dir / split
        out_split.mkdir(parents=True, exist_ok=True)
        write_text_files(out_split, source)

        tokens = text_lib.tokenize(self.nlp, [q["question"] for q in source.questions])
        summary: dict = {}
        if defines_vocabulary:
            summary.update(self.build_vocabularies(source, tokens))
        words = text_lib.read_vocabulary(self.out_dir / "vocab.json")
        word_index = {word: i for i, word in enumerate(words)}
        token_ids, truncated = text_lib.token_ids(tokens, word_index, self.max_question_length)
        unknown = int(np.sum(token_ids == text_lib.UNK_ID))

        answers = answers_lib.read_answers(self.out_dir / "answers.json")
        answer_index = {answer: i for i, answer in enumerate(answers)}
        targets = answer_targets(source, answer_index)

        result = self.image_features(source, out_split)
        row_of = {int(image_id): row for row, image_id in enumerate(result.image_ids)}
        image_index = np.array([row_of.get(int(q["image_id"]), -1) for q in source.questions], np.int32)
        skipped_ids = sorted(result.skipped)
        if skipped_ids:
            reasons = "; ".join(f"{i}: {result.skipped[i]}" for i in skipped_ids[:SHOWN_IDS])
            self.log(
                f"{split}: {len(skipped_ids)} images missing or unreadable ({reasons}"
                f"{'; ...' if len(skipped_ids) > SHOWN_IDS else ''}); their "
                f"{int(np.sum(image_index < 0))} questions stay in the text files but are left out of training"
            )
        _write_questions_h5(out_split / "questions.h5", source, token_ids, image_index, targets)

        mc_index, _, score_values = targets
        covered = float(np.mean(score_values.max(axis=1) > 0)) if source.has_annotations and len(mc_index) else None
        summary.update(
            questions_file=str(source.questions_file.resolve()),
            annotations_file=str(source.annotations_file.resolve()) if source.annotations_file else None,
            images_dir=str(self.images_dir.resolve()),
            num_questions=len(source.questions), num_images=int(len(result.image_ids)),
            num_missing_images=len(skipped_ids), missing_image_ids=[int(i) for i in skipped_ids[:20]],
            questions_without_image=int(np.sum(image_index < 0)), unknown_tokens=unknown,
            truncated_questions=int(truncated), answer_coverage=covered,
            has_annotations=source.has_annotations, seconds=round(time.monotonic() - started, 1),
        )
        self.manifest["splits"][split] = summary
        self.manifest["data_dir"] = str(self.data_dir.resolve())
        self._save_manifest()
        return summary

    def run(self, splits: Sequence[str]) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        reuse = self._vocabularies_exist() and self.manifest["first_split"] not in splits[:1]
        if reuse:
            self.log(f"Reusing the vocabularies of {self.manifest['first_split']} in {self.out_dir}")
        for position, split in enumerate(splits):
            self.run_split(split, defines_vocabulary=position == 0 and not reuse)
        return self.manifest


def preprocess(data_dir: str | Path, out_dir: str | Path, splits: Sequence[str] = ("train2014", "val2014"), *,
               vectors: str = "en_core_web_lg", weights: str = "imagenet", images_dir: str | Path | None = None,
               limit: int | None = None, top_answers: int = 1000, max_question_length: int = 25,
               batch_size: int = 32, feature_dtype: str = "float16", features_mat: str | Path | None = None,
               id_map: str | Path | None = None, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Preprocess the official VQA v2 files of ``splits`` into ``out_dir``.

    The first split defines the answer and word vocabularies; later splits (and later runs
    into the same ``out_dir``) reuse them. Returns the manifest written to preprocess.json.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise VQAError(f"--data-dir {data_dir} is not a folder; point it at the unpacked VQA v2 files.")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise VQAError(f"--images {images_dir} is not a folder of COCO images.")
    if bool(features_mat) != bool(id_map):
        raise VQAError("--features-mat and --id-map go together: pass both (the .mat file and its id map).")
    if feature_dtype not in ("float16", "float32"):
        raise VQAError(f"--feature-dtype must be float16 or float32, not {feature_dtype!r}.")
    if not splits:
        raise VQAError("--splits is empty; name at least one split, e.g. train2014.")
    for option, value in (("--limit", limit), ("--batch-size", batch_size),
                          ("--max-question-length", max_question_length), ("--top-answers", top_answers)):
        if value is not None and value < 1:
            raise VQAError(f"{option} must be at least 1, not {value}.")
    preprocessor = Preprocessor(
        data_dir, out_dir, vectors=vectors, weights=weights, images_dir=Path(images_dir) if images_dir else None,
        limit=limit, top_answers=top_answers, max_question_length=max_question_length, batch_size=batch_size,
        feature_dtype=feature_dtype, features_mat=Path(features_mat) if features_mat else None,
        id_map=Path(id_map) if id_map else None, seed=seed, log=log,
    )
    manifest = preprocessor.run(list(splits))
    log(summary_text(manifest, splits))
    return manifest


def summary_text(manifest: dict, splits: Sequence[str]) -> str:
    """A short table of what each split holds."""
    lines = ["split          questions  images  missing  answer coverage"]
    for split in splits:
        entry = manifest["splits"][split]
        coverage = "-" if entry.get("answer_coverage") is None else f"{100 * entry['answer_coverage']:.1f}%"
        lines.append(
            f"{split:<14} {entry['num_questions']:>9}  {entry['num_images']:>6}  {entry['num_missing_images']:>7}"
            f"  {coverage:>15}"
        )
    lines.append(
        f"vocabulary: {manifest.get('vocabulary_size')} words ({manifest.get('oov_words')} without a vector), "
        f"{manifest.get('num_answers')} answers"
    )
    return "\n".join(lines)


def load_manifest(out_dir: str | Path) -> dict:
    """Read ``OUT/preprocess.json``, checking that OUT is preprocessed data of this version.

    Raises:
        VQAError: when OUT is missing, not preprocessed, or of another format version.
    """
    out_dir = Path(out_dir)
    path = out_dir / "preprocess.json"
    if not out_dir.is_dir():
        raise VQAError(f"preprocessed directory {out_dir} does not exist: run `vqa preprocess` to make it.")
    if not path.is_file():
        raise VQAError(f"{out_dir} is not a preprocessed directory (no preprocess.json): "
                       "run `vqa preprocess` to make it.")
    manifest = read_json(path, "preprocessing record")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise VQAError(f"{path} has format version {version}, this vqa reads version {FORMAT_VERSION}: "
                       f"run `vqa preprocess` again into {out_dir}.")
    return manifest
