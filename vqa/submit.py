"""Leaderboard-ready submissions: a run's answers to a test split, checked and packed for the evaluation server.

Reads a run (``vqa.run_folder``: its model, run description and answer vocabulary), its
preprocessed data OUT (the manifest, the split's question arrays, ``vqa.split_files``, and
image features) and the split's official questions file that preprocessing read.
Writes, into ``--out`` (default ``RUN/submission/<split>/``):
    the results file (official naming, ``vqa.layout.results_filename``)   one
        ``{"question_id": int, "answer": str}`` per question of the official file, in its order
    the zip (``vqa.layout.submission_zip_filename``)   that results file alone, at the zip's top,
        as the server unpacks it
    ``submission.json``   what was packed: split, leaderboard, counts, file names and the zip's SHA-256

The server rejects a file that does not answer exactly the questions of the split, so every
check runs before the model answers anything: OUT holds the split, the official file names
each question once and in the split its subtype says, and OUT's arrays hold each of its
questions once and nothing else (``--limit`` and skipped bad questions are caught here).

test-dev2015 (107,394 questions, a subset of test2015) gives the test-dev leaderboard;
test-std results come from the full test2015 questions file (447,793 questions).
"""

from __future__ import annotations

import collections
import hashlib
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from vqa import answers as answers_lib
from vqa import layout, run_folder, split_files
from vqa.errors import VQAError
from vqa.evaluate import check_compatible, predict_split
from vqa.locks import folder_lock
from vqa.manifest import load_manifest, manifest_path, require_split
from vqa.paths import check_outputs
from vqa.sources import name_ids
from vqa.storage import atomic_path, read_json, write_json

# The split submitted -> the leaderboard its results are for.
LEADERBOARDS = {"test-dev2015": "test-dev", "test2015": "test-std"}
SUBMISSION_FOLDER = "submission"
RECORD_FILE = "submission.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # a fixed member date, so the same answers give the same zip bytes


def submission_dir(run_dir: str | Path, split: str) -> Path:
    """Where ``vqa submit`` packs ``split`` by default: ``RUN/submission/<split>/``."""
    return Path(run_dir) / SUBMISSION_FOLDER / split


def official_question_ids(path: Path, split: str) -> list[int]:
    """The question ids of an official questions file, in its order, checked to name each question once.

    Raises:
        VQAError: the file is not a questions file, is of another split, has an entry without an
            integer question id, or repeats ids.
    """
    data = read_json(path, "questions file", layout.OFFICIAL_JSON_MAX_BYTES)
    entries = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise VQAError(f"{path} has no 'questions' list; is it an official VQA v2 questions file?")
    subtype = data.get("data_subtype")
    if isinstance(subtype, str) and subtype and subtype != split:
        raise VQAError(f"{path} is the {subtype} questions file (its data_subtype), not {split}'s; preprocess the "
                       f"official {layout.questions_filename(split)} as {split}.")
    ids, unusable = [], []
    for position, entry in enumerate(entries):
        question_id = entry.get("question_id") if isinstance(entry, dict) else None
        if isinstance(question_id, int) and not isinstance(question_id, bool):
            ids.append(question_id)
        else:
            unusable.append(f"questions[{position}]")
    if unusable:
        raise VQAError(f"{path}: {len(unusable)} entries have no integer question_id ({', '.join(unusable[:5])}"
                       f"{', ...' if len(unusable) > 5 else ''}); the file is damaged: download it again.")
    repeated = _repeated(ids)
    if repeated:
        raise VQAError(f"{path}: {len(repeated)} question ids appear more than once ({name_ids(repeated)}); the "
                       "server wants each question answered once: download the file again.")
    return ids


def check_coverage(official: Sequence[int], preprocessed: Sequence[int], questions_file: Path,
                   split_dir: Path, again: str, skipped: int = 0) -> None:
    """Refuse preprocessed questions that are not exactly those of the official file, each once.

    Args:
        official: the official file's question ids.
        preprocessed: the split's question ids in OUT.
        questions_file: the official file, for the message.
        split_dir: ``OUT/<split>``, for the message.
        again: how to preprocess the split again.
        skipped: bad questions preprocessing left out of the split (its record's ``skipped_questions``).

    Raises:
        VQAError: ids repeated in OUT, questions of the file missing from OUT, or questions of OUT
            not in the file; counted and a few named.
    """
    repeated = _repeated(preprocessed)
    if repeated:
        raise VQAError(f"{split_dir} holds {len(repeated)} question ids more than once ({name_ids(repeated)}), "
                       f"which the server rejects; {again}.")
    kept = set(preprocessed)
    missing = [question_id for question_id in official if question_id not in kept]
    if missing:
        cause = (f"preprocessing left out {skipped} of its questions as bad items" if skipped
                 else "was it preprocessed with --limit?")
        raise VQAError(f"{len(missing)} of the {len(official)} questions of {questions_file} are not in {split_dir} "
                       f"({name_ids(missing)}), and the server only takes results for every question ({cause}); "
                       f"{again}{'' if skipped else ' without --limit'}.")
    asked = set(official)
    extra = [question_id for question_id in preprocessed if question_id not in asked]
    if extra:
        raise VQAError(f"{split_dir} holds {len(extra)} questions that {questions_file} does not have "
                       f"({name_ids(extra)}): the file changed after preprocessing; {again}.")


def _repeated(ids: Sequence[int]) -> list[int]:
    return [int(question_id) for question_id, count in collections.Counter(ids).items() if count > 1]


def write_zip(zip_path: Path, results_path: Path) -> str:
    """Zip ``results_path`` alone, under its own name at the top, atomically; returns the zip's SHA-256."""
    member = zipfile.ZipInfo(results_path.name, date_time=ZIP_DATE)
    member.compress_type = zipfile.ZIP_DEFLATED
    member.external_attr = 0o644 << 16
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr(member, results_path.read_bytes())
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def submit(run_dir: str | Path, split: str, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
           batch_size: int = 512, log: Callable[[str], None] = print) -> dict:
    """Answer every question of a test split and pack the results for the evaluation server.

    Args:
        run_dir: the run (``vqa train --out``); its folder name is the results file's ``<name>``.
        split: "test-dev2015" (test-dev leaderboard) or "test2015" (test-std leaderboard).
        data_dir: the preprocessed folder holding ``split`` (default: the one the run was trained on).
        out_dir: where the files go (default ``submission_dir(run_dir, split)``).
        batch_size: questions per model call.
        log: where progress sentences go.

    Returns:
        What ``submission.json`` records: split, leaderboard, run, num_questions,
        questions_without_image, questions_file, results_file, zip, zip_sha256, seconds.

    Raises:
        VQAError: a split that is not a test split, a run or OUT that cannot be used, questions
            missing or repeated, or an output that would overwrite an input; before any work.
    """
    started = time.monotonic()
    if split not in LEADERBOARDS:
        raise VQAError(f"--split {split} is not a test split; pass test-dev2015 (test-dev leaderboard) or test2015 "
                       "(test-std leaderboard).")
    if batch_size < 1:
        raise VQAError(f"--batch-size must be at least 1, not {batch_size}.")
    run_dir = Path(run_dir)
    run = run_folder.check_run_dir(run_dir)
    data_dir = Path(data_dir) if data_dir else Path(run.data_dir)
    manifest = load_manifest(data_dir)
    record = require_split(data_dir, manifest, split)
    check_compatible(run_dir, data_dir)
    questions_file = Path(record.questions_file) if record.questions_file else None
    if questions_file is None or not questions_file.is_file():
        raise VQAError(f"the {split} questions file preprocessing read ({questions_file}) is gone; put the official "
                       f"{layout.questions_filename(split)} back there, or preprocess {split} again from where it is.")
    name = run_dir.resolve().name
    out_dir = Path(out_dir) if out_dir else submission_dir(run_dir, split)
    results_path = out_dir / layout.results_filename(split, name)
    zip_path = out_dir / layout.submission_zip_filename(split, name)
    record_path = out_dir / RECORD_FILE
    split_dir = data_dir / split
    check_outputs({f"the {split} questions file": questions_file, "OUT's preprocessing record": manifest_path(data_dir),
                   f"OUT's {split} questions": split_files.questions_path(split_dir),
                   "the run's model": run_folder.model_path(run_dir),
                   "the run's description": run_folder.run_info_path(run_dir),
                   "the run's answers": answers_lib.answers_path(run_dir)},
                  {"the submission record in --out": record_path, "the results file in --out": results_path,
                   "the zip in --out": zip_path})
    official = official_question_ids(questions_file, split)
    again = f"preprocess {split} again (`vqa preprocess --splits {split} --out {data_dir}`)"
    check_coverage(official, split_files.read_questions(split_dir).question_ids.tolist(), questions_file,
                   split_dir, again, record.skipped_questions)
    answers = answers_lib.read_answers(run_dir)
    with folder_lock(out_dir, "submit"):
        model = run_folder.load_run_model(run_dir)
        if model.outputs[0].shape[-1] != len(answers):
            raise VQAError(f"{run_folder.model_path(run_dir)} predicts {model.outputs[0].shape[-1]} answers but its "
                           f"answer vocabulary lists {len(answers)}; the run folder is inconsistent: train it again.")
        question_ids, scores, missing = predict_split(model, data_dir, split, batch_size, run.features)
        best = scores.argmax(axis=1)
        answer_of = {int(question_id): answers[int(index)] for question_id, index in zip(question_ids, best)}
        results = [{"question_id": question_id, "answer": answer_of[question_id]} for question_id in official]
        write_json(results_path, results, indent=None)
        summary = {"split": split, "leaderboard": LEADERBOARDS[split], "run": str(run_dir),
                   "num_questions": len(results), "questions_without_image": missing,
                   "questions_file": str(questions_file), "results_file": str(results_path), "zip": str(zip_path),
                   "zip_sha256": write_zip(zip_path, results_path), "seconds": round(time.monotonic() - started, 1)}
        write_json(record_path, summary)
    log(f"{len(results)} answers to every {split} question written to {results_path}"
        + (f" ({missing} questions had no image and were answered from a zero image vector)" if missing else ""))
    log(f"for the {LEADERBOARDS[split]} leaderboard: upload {zip_path} (it holds {results_path.name} alone)"
        + ("; the test-std leaderboard needs --split test2015" if split == "test-dev2015" else ""))
    return summary
