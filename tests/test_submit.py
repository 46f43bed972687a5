"""`vqa submit`: a tiny run's answers to generated test splits, checked and zipped for the evaluation server.

One run is trained for the module on official-layout data made in tmp_path: train2014 (4 images),
test-dev2015 (images 8 and 9) and test2015 (images 8, 9 and 10, so test-dev is a subset of it, as
in the real release), the test splits without annotations. ``vqa evaluate`` answers both test
splits first, so the submissions can be compared with its results files.
"""

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from helpers import THREE_QUESTIONS as QUESTIONS
from helpers import preprocess, three_question_items, write_official_split
from vqa import manifest as manifest_lib
from vqa import split_files
from vqa.cli import main
from vqa.errors import VQAError

pytestmark = pytest.mark.slow  # one tiny training for the module

SPLIT_IMAGES = {"test-dev2015": [8, 9], "test2015": [8, 9, 10]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_backbone, vectors_factory):
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.evaluate import evaluate
    from vqa.train import train

    root = tmp_path_factory.mktemp("submit")
    raw, out, run = root / "raw", root / "processed", root / "runs" / "tiny"
    write_official_split(raw, "train2014", three_question_items([1, 2, 3, 4]))
    for split, images in SPLIT_IMAGES.items():
        write_official_split(raw, split, three_question_items(images), annotated=False)
    words = {word for question, _, _ in QUESTIONS for word in question.split()}
    settings = {"vectors": str(vectors_factory(words)), "weights": str(tiny_backbone)}
    preprocess(raw, out, ["train2014", *SPLIT_IMAGES], **settings)
    config = Config(data=DataConfig(data_dir=str(out), val_split=""),
                    model=ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8),
                    train=TrainConfig(epochs=1, batch_size=16))
    train(out, run, config, log=lambda message: None)
    evaluated = {split: evaluate(run, out, split=split, log=lambda message: None)["results_file"]
                 for split in SPLIT_IMAGES}
    return {"raw": raw, "out": out, "run": run, "evaluated": evaluated, "settings": settings}


def _official_ids(tiny, split):
    data = json.loads((tiny["raw"] / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
    return [question["question_id"] for question in data["questions"]]


def _submit(capsys, *args):
    """Exit status, the JSON summary printed last (None on failure) and stderr."""
    status = main(["submit", *map(str, args)])
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1]) if status == 0 else None
    return status, printed, captured.err


def _refused(capsys, *args) -> str:
    status, _, err = _submit(capsys, *args)
    assert status == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _copy_out(tiny, tmp_path):
    copy = tmp_path / "processed"
    shutil.copytree(tiny["out"], copy)
    return copy


def _replace_split_record(out, split, **changes):
    manifest = manifest_lib.read_manifest(out)
    record = dataclasses.replace(manifest.splits[split], **changes)
    manifest_lib.write_manifest(out, manifest.with_split(split, record))


@pytest.mark.parametrize("split, leaderboard", [("test-dev2015", "test-dev"), ("test2015", "test-std")])
def test_submit_zips_one_results_file_answering_every_question_once(tiny, capsys, split, leaderboard):
    status, summary, err = _submit(capsys, "--run", tiny["run"], "--split", split)
    assert status == 0
    folder = tiny["run"] / "submission" / split
    name = f"v2_OpenEnded_mscoco_{split}_tiny_results.json"
    zip_path = folder / f"v2_OpenEnded_mscoco_{split}_tiny_results.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == [name]
        results = json.loads(archive.read(name))
    official = _official_ids(tiny, split)
    assert len(official) == 3 * len(SPLIT_IMAGES[split])
    assert [result["question_id"] for result in results] == official
    assert all(set(result) == {"question_id", "answer"} and type(result["question_id"]) is int
               and isinstance(result["answer"], str) for result in results)
    evaluated = {r["question_id"]: r["answer"] for r in json.loads(Path(tiny["evaluated"][split]).read_text())}
    assert {r["question_id"]: r["answer"] for r in results} == evaluated
    assert json.loads((folder / name).read_text()) == results
    assert summary == json.loads((folder / "submission.json").read_text())
    assert summary["leaderboard"] == leaderboard and summary["num_questions"] == len(official)
    assert summary["zip"] == str(zip_path)
    assert f"for the {leaderboard} leaderboard" in err


def test_test_dev_is_the_subset_of_test_std_and_answered_alike(tiny, capsys):
    answers = {}
    for split in SPLIT_IMAGES:
        assert _submit(capsys, "--run", tiny["run"], "--split", split)[0] == 0
        path = tiny["run"] / "submission" / split / f"v2_OpenEnded_mscoco_{split}_tiny_results.json"
        answers[split] = {r["question_id"]: r["answer"] for r in json.loads(path.read_text())}
    assert set(answers["test-dev2015"]) < set(answers["test2015"])
    assert {qid: answers["test2015"][qid] for qid in answers["test-dev2015"]} == answers["test-dev2015"]


def test_the_same_answers_give_the_same_zip_bytes(tiny, capsys, tmp_path):
    zips = []
    for attempt in ("first", "second"):
        status, summary, _ = _submit(capsys, "--run", tiny["run"], "--split", "test-dev2015",
                                     "--out", tmp_path / attempt)
        assert status == 0
        zips.append((tmp_path / attempt / "v2_OpenEnded_mscoco_test-dev2015_tiny_results.zip").read_bytes())
    assert zips[0] == zips[1]
    assert summary["zip_sha256"] == hashlib.sha256(zips[1]).hexdigest()


def test_a_split_preprocessed_with_limit_is_refused_before_any_work(tiny, capsys, tmp_path):
    limited = _copy_out(tiny, tmp_path)
    preprocess(tiny["raw"], limited, ["test-dev2015"], limit=4, **tiny["settings"])
    target = tmp_path / "submission"
    error = _refused(capsys, "--run", tiny["run"], "--split", "test-dev2015", "--data", limited, "--out", target)
    official = _official_ids(tiny, "test-dev2015")
    assert error == (f"error: 2 of the 6 questions of {tiny['raw']}/v2_OpenEnded_mscoco_test-dev2015_questions.json "
                     f"are not in {limited}/test-dev2015 ({official[4]}, {official[5]}), and the server only takes "
                     "results for every question (was it preprocessed with --limit?); preprocess test-dev2015 again "
                     f"(`vqa preprocess --splits test-dev2015 --out {limited}`) without --limit.")
    assert not target.exists()


def test_a_bad_question_that_preprocessing_skipped_is_refused(tiny, capsys, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = json.loads((tiny["raw"] / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())
    data["questions"][3]["question"] = 42  # not a string: preprocessing skips it, the server still asks it
    (raw / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(data))
    skipped = _copy_out(tiny, tmp_path)
    preprocess(raw, skipped, ["test-dev2015"], images_dir=str(tiny["raw"]), **tiny["settings"])
    assert manifest_lib.read_manifest(skipped).splits["test-dev2015"].skipped_questions == 1
    error = _refused(capsys, "--run", tiny["run"], "--split", "test-dev2015", "--data", skipped,
                     "--out", tmp_path / "submission")
    assert error.startswith(f"error: 1 of the 6 questions of {raw}/v2_OpenEnded_mscoco_test-dev2015_questions.json "
                            f"are not in {skipped}/test-dev2015 ({data['questions'][3]['question_id']}), and the "
                            "server only takes results for every question (preprocessing left out 1 of its "
                            "questions as bad items)")


@pytest.mark.parametrize("rows, expected", [
    ([0, 1, 3, 4, 5], "1 of the 6 questions of"),
    ([0, 1, 2, 3, 4, 5, 2], "holds 1 question ids more than once"),
])
def test_a_question_deleted_or_repeated_in_the_preprocessed_arrays_is_refused(tiny, capsys, tmp_path, rows,
                                                                               expected):
    edited = _copy_out(tiny, tmp_path)
    arrays = split_files.read_questions(edited / "test-dev2015")
    kept = {field.name: getattr(arrays, field.name)[rows] for field in dataclasses.fields(arrays)
            if field.name not in ("split", "has_annotations")}
    split_files.write_questions(edited / "test-dev2015", dataclasses.replace(arrays, **kept))
    target = tmp_path / "submission"
    error = _refused(capsys, "--run", tiny["run"], "--split", "test-dev2015", "--data", edited, "--out", target)
    assert expected in error and f"({_official_ids(tiny, 'test-dev2015')[2]})" in error
    assert not target.exists()


def test_duplicated_ids_in_the_official_file_are_refused(tiny, capsys, tmp_path):
    edited = _copy_out(tiny, tmp_path)
    questions_file = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    data = json.loads((tiny["raw"] / questions_file.name).read_text())
    data["questions"].append(dict(data["questions"][1]))
    questions_file.write_text(json.dumps(data))
    _replace_split_record(edited, "test-dev2015", questions_file=str(questions_file))
    error = _refused(capsys, "--run", tiny["run"], "--split", "test-dev2015", "--data", edited,
                     "--out", tmp_path / "submission")
    repeated = data["questions"][1]["question_id"]
    assert error == (f"error: {questions_file}: 1 question ids appear more than once ({repeated}); the server wants "
                     "each question answered once: download the file again.")


def test_the_test_dev_file_preprocessed_as_test2015_is_refused(tiny, capsys, tmp_path):
    edited = _copy_out(tiny, tmp_path)
    test_dev = tiny["raw"] / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    _replace_split_record(edited, "test2015", questions_file=str(test_dev))
    error = _refused(capsys, "--run", tiny["run"], "--split", "test2015", "--data", edited,
                     "--out", tmp_path / "submission")
    assert error.startswith(f"error: {test_dev} is the test-dev2015 questions file (its data_subtype), not test2015's")


def test_a_split_out_lacks_is_refused(tiny, capsys, tmp_path):
    edited = _copy_out(tiny, tmp_path)
    manifest = manifest_lib.read_manifest(edited)
    splits = {name: record for name, record in manifest.splits.items() if name != "test2015"}
    manifest_lib.write_manifest(edited, manifest.replace(splits=splits))
    error = _refused(capsys, "--run", tiny["run"], "--split", "test2015", "--data", edited,
                     "--out", tmp_path / "submission")
    assert error == (f"error: split 'test2015' was not preprocessed into {edited} (it holds: test-dev2015, "
                     f"train2014): run `vqa preprocess --splits test2015 --out {edited}`, or choose another split.")


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tiny, capsys, tmp_path):
    target = tmp_path / "submission"
    target.mkdir()
    questions_file = tiny["raw"] / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    before = questions_file.read_bytes()
    link = target / "v2_OpenEnded_mscoco_test-dev2015_tiny_results.json"
    link.symlink_to(questions_file)
    error = _refused(capsys, "--run", tiny["run"], "--split", "test-dev2015", "--out", target)
    assert error == (f"error: the results file in --out {link} is also the test-dev2015 questions file; "
                     "choose another file name.")
    assert questions_file.read_bytes() == before


def test_only_test_splits_are_submitted(tiny, capsys):
    from vqa.submit import submit

    with pytest.raises(VQAError, match="--split train2014 is not a test split; pass test-dev2015"):
        submit(tiny["run"], "train2014")
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--run", str(tiny["run"]), "--split", "val2014"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'val2014'" in capsys.readouterr().err
