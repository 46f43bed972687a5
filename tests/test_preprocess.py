"""vqa preprocess on the real VQA v2 sample and on tiny generated data in the official layout."""

import json
import shutil

import h5py
import numpy as np
import pytest
import scipy.io

from helpers import preprocess, write_image, write_official_split
from vqa import metric
from vqa.cli import main
from vqa.errors import VQAError
from vqa.storage import read_lines

QUIET = dict(log=lambda message: None)


def _words(*roots):
    from vqa import text

    questions = []
    for root in roots:
        for path in root.glob("v2_OpenEnded_mscoco_*_questions.json"):
            questions += [q["question"] for q in json.loads(path.read_text())["questions"]]
    return {t for tokens in text.tokenize(text.blank_tokenizer("en"), questions) for t in tokens}


@pytest.mark.slow
def test_real_sample_preprocesses_with_vgg16_random_weights(real_sample_official_layout, vectors_factory, tmp_path,
                                                            capsys):
    raw = real_sample_official_layout
    vectors = vectors_factory(_words(raw))
    out = tmp_path / "out"
    code = main(["preprocess", "--data-dir", str(raw), "--out", str(out), "--vectors", str(vectors),
                 "--weights", "none", "--batch-size", "4"])
    assert code == 0
    log = capsys.readouterr().err
    assert "262146" in log and "1 images missing" in log

    assert len(read_lines(out / "train2014" / "questions.txt")) == 5
    assert len(read_lines(out / "val2014" / "questions.txt")) == 37
    assert read_lines(out / "val2014" / "answers.txt") == [""] * 37  # val sample has no annotations
    assert read_lines(out / "train2014" / "question_ids.txt")[:2] == ["458752000", "458752001"]

    rows = 0
    for split, images in (("train2014", {458752}), ("val2014", {262148, 393225, 192, 241, 257, 294})):
        with h5py.File(out / split / "image_features.h5") as f:
            assert set(f["image_ids"][...].tolist()) == images
            assert f["features"].shape == (len(images), 4096)
            assert np.isfinite(f["features"][...]).all()
            rows += len(images)
    assert rows == 7
    with h5py.File(out / "train2014" / "questions.h5") as f:
        image_index = f["image_index"][...]
        image_ids = f["image_ids"][...]
        assert (image_index[image_ids == 262146] == -1).all()
        assert (image_index[image_ids == 458752] == 0).all()
    manifest = json.loads((out / "preprocess.json").read_text())
    assert manifest["splits"]["train2014"]["missing_image_ids"] == [262146]
    assert manifest["backbone"]["kind"] == "vgg16" and manifest["feature_dim"] == 4096


YES, NO = "yes", "no"


def _items():
    return [
        {"image_id": 1, "question": "Is the ball red?", "answers": [YES] * 7 + [NO] * 3, "answer_type": "yes/no"},
        {"image_id": 1, "question": "How many balls are there?",
         "answers": ["two"] * 4 + ["2"] * 4 + ["3"] * 2, "answer_type": "number"},
        {"image_id": 2, "question": "What color is the ball?",
         "answers": ["Red", "red"] + ["blue"] * 8, "answer_type": "other"},
        {"image_id": 3, "question": "What is it?", "answers": ["dog"] * 10, "answer_type": "other"},
        # These put "no", "red" and "3" in the answer vocabulary (multiple-choice answers of train2014).
        {"image_id": 3, "question": "Is it a cat?", "answers": [NO] * 10, "answer_type": "yes/no"},
        {"image_id": 3, "question": "What color is it?", "answers": ["red"] * 10, "answer_type": "other"},
        {"image_id": 2, "question": "How many dogs?", "answers": ["3"] * 10, "answer_type": "number"},
    ]


@pytest.fixture
def tiny_raw(tmp_path):
    raw = tmp_path / "raw"
    write_official_split(raw, "train2014", _items())
    write_official_split(raw, "val2014", [
        {"image_id": 9, "question": "Is the zebra red?", "answers": [NO] * 10, "answer_type": "yes/no"}])
    return raw


def test_soft_scores_are_the_official_accuracy_of_each_answer(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    out = tmp_path / "out"
    preprocess(tiny_raw, out, ["train2014"], vectors=str(vectors_factory(_words(tiny_raw))),
               weights=str(tiny_backbone), **QUIET)
    answers = json.loads((out / "answers.json").read_text())["answers"]
    with h5py.File(out / "train2014" / "questions.h5") as f:
        indices, values = f["score_indices"][...], f["score_values"][...]
        mc = f["answer_index"][...]

    def scores(row):
        return {answers[i]: round(float(v), 6) for i, v in zip(indices[row], values[row]) if i >= 0}

    # Predicting "no" against 7 x yes + 3 x no: each "yes" entry sees 3 other "no" -> 1, each "no" entry
    # sees 2 -> 2/3: (7 * 1 + 3 * 2/3) / 10 = 0.9 (the official 0/0.3/0.6/0.9/1.0 for 0..4 matches).
    assert scores(0) == {"yes": 1.0, "no": 0.9}
    # "two" normalises to "2": 8 matches -> 1.0; "3": 2 matches -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6.
    assert scores(1) == {"2": 1.0, "3": 0.6}
    # "Red" and "red" both count for "red" (answers differ, so normalisation applies): 2 matches -> 0.6,
    # where the raw strings would give 1 match -> 0.3.
    assert scores(2) == {"blue": 1.0, "red": 0.6}
    assert scores(3) == {"dog": 1.0}
    for row, human in enumerate(item["answers"] for item in _items()):
        for answer, value in scores(row).items():
            assert value == round(metric.question_accuracy(answer, human), 6)
    assert [answers[i] for i in mc] == ["yes", "2", "blue", "dog", "no", "red", "3"]


def test_later_split_reuses_the_first_splits_vocabularies(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    out = tmp_path / "out"
    vectors = str(vectors_factory(_words(tiny_raw)))
    preprocess(tiny_raw, out, ["train2014"], vectors=vectors, weights=str(tiny_backbone), **QUIET)
    vocab = (out / "vocab.json").read_text()
    answers = (out / "answers.json").read_text()
    preprocess(tiny_raw, out, ["val2014"], vectors=vectors, weights=str(tiny_backbone), **QUIET)
    assert (out / "vocab.json").read_text() == vocab and (out / "answers.json").read_text() == answers
    words = json.loads(vocab)["words"]
    with h5py.File(out / "val2014" / "questions.h5") as f:
        ids = f["token_ids"][0]
    assert [words[i] for i in ids if i] == ["is", "the", "<unk>", "red", "?"]  # "zebra" is not a train word
    manifest = json.loads((out / "preprocess.json").read_text())
    assert set(manifest["splits"]) == {"train2014", "val2014"} and manifest["first_split"] == "train2014"


def test_questions_only_split_and_missing_and_corrupt_images(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    write_official_split(tiny_raw, "test-dev2015", [
        {"image_id": 20, "question": "Is it red?", "answers": [YES] * 10},
        {"image_id": 21, "question": "Is it blue?", "answers": [YES] * 10},
        {"image_id": 22, "question": "Is it green?", "answers": [YES] * 10},
    ], annotated=False)
    (tiny_raw / "test2015" / "COCO_test2015_000000000021.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tiny_raw / "test2015" / "COCO_test2015_000000000022.jpg").unlink()
    out = tmp_path / "out"
    messages = []
    preprocess(tiny_raw, out, ["train2014", "test-dev2015"], vectors=str(vectors_factory(_words(tiny_raw))),
               weights=str(tiny_backbone), log=messages.append)
    assert any("2 images missing or unreadable" in m and "21" in m and "22" in m for m in messages)
    assert read_lines(out / "test-dev2015" / "questions.txt") == ["Is it red?", "Is it blue?", "Is it green?"]
    assert read_lines(out / "test-dev2015" / "answers.txt") == ["", "", ""]
    with h5py.File(out / "test-dev2015" / "questions.h5") as f:
        assert f["image_index"][...].tolist() == [0, -1, -1]
        assert not f.attrs["has_annotations"]
    with h5py.File(out / "test-dev2015" / "image_features.h5") as f:
        assert f["image_ids"][...].tolist() == [20]


def test_limit_keeps_the_first_questions(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    out = tmp_path / "out"
    preprocess(tiny_raw, out, ["train2014"], vectors=str(vectors_factory(_words(tiny_raw))),
               weights=str(tiny_backbone), limit=2, **QUIET)
    assert read_lines(out / "train2014" / "question_ids.txt") == ["1000", "1001"]
    assert len(read_lines(out / "train2014" / "questions.txt")) == 2
    with h5py.File(out / "train2014" / "image_features.h5") as f:
        assert f["image_ids"][...].tolist() == [1]


def test_neuraltalk_mat_features_import_through_preprocess(tiny_raw, vectors_factory, tmp_path):
    feats = np.random.default_rng(0).normal(size=(4096, 5)).astype(np.float32)
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": feats})
    (tmp_path / "id_map.txt").write_text("3 4\n1 0\n2 2\n")
    out = tmp_path / "out"
    assert main(["preprocess", "--data-dir", str(tiny_raw), "--out", str(out), "--splits", "train2014",
                 "--vectors", str(vectors_factory(_words(tiny_raw))), "--features-mat", str(tmp_path / "vgg_feats.mat"),
                 "--id-map", str(tmp_path / "id_map.txt"), "--feature-dtype", "float32"]) == 0
    with h5py.File(out / "train2014" / "image_features.h5") as f:
        ids, rows = f["image_ids"][...].tolist(), f["features"][...]
    assert ids == [1, 2, 3]  # first appearance in the questions file
    np.testing.assert_array_equal(rows, feats[:, [0, 2, 4]].T)
    assert json.loads((out / "backbone.json").read_text())["kind"] == "mat"


def test_bad_inputs_are_one_sentence_errors(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    vectors = str(vectors_factory(_words(tiny_raw)))
    with pytest.raises(VQAError, match="v2_OpenEnded_mscoco_val2015_questions.json does not exist"):
        preprocess(tiny_raw, tmp_path / "o1", ["val2015"], vectors=vectors, weights=str(tiny_backbone), **QUIET)
    with pytest.raises(VQAError, match="is not a folder"):
        preprocess(tmp_path / "nowhere", tmp_path / "o2", vectors=vectors, **QUIET)
    path = tiny_raw / "v2_mscoco_train2014_annotations.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(VQAError, match=r"annotations file .* is not valid JSON \(line 1"):
        preprocess(tiny_raw, tmp_path / "o3", ["train2014"], vectors=vectors, weights=str(tiny_backbone), **QUIET)
    with pytest.raises(VQAError, match="has no annotations, so it cannot define the answer vocabulary"):
        shutil.copy(tiny_raw / "v2_OpenEnded_mscoco_val2014_questions.json",
                    tiny_raw / "v2_OpenEnded_mscoco_test2015_questions.json")
        preprocess(tiny_raw, tmp_path / "o4", ["test2015"], vectors=vectors, weights=str(tiny_backbone), **QUIET)


def test_duplicate_question_ids_are_named(tiny_raw, tmp_path):
    path = tiny_raw / "v2_OpenEnded_mscoco_train2014_questions.json"
    data = json.loads(path.read_text())
    data["questions"].append(dict(data["questions"][0]))
    path.write_text(json.dumps(data))
    with pytest.raises(VQAError, match=r"1 question ids appear more than once \(1000\)"):
        preprocess(tiny_raw, tmp_path / "out", ["train2014"], vectors="unused", **QUIET)


def test_grayscale_and_png_under_jpg_name_are_converted_not_skipped(tiny_raw, tiny_backbone, vectors_factory, tmp_path):
    from PIL import Image

    Image.new("L", (30, 20), 128).save(tiny_raw / "train2014" / "COCO_train2014_000000000001.jpg", format="JPEG")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tiny_raw / "train2014" / "COCO_train2014_000000000002.jpg", format="PNG")
    write_image(tiny_raw / "train2014" / "COCO_train2014_000000000003.jpg")
    out = tmp_path / "out"
    preprocess(tiny_raw, out, ["train2014"], vectors=str(vectors_factory(_words(tiny_raw))),
               weights=str(tiny_backbone), **QUIET)
    with h5py.File(out / "train2014" / "image_features.h5") as f:
        assert sorted(f["image_ids"][...].tolist()) == [1, 2, 3]


def test_sharded_extraction_then_a_plain_run_gives_the_unsharded_files(tiny_raw, tiny_backbone, vectors_factory,
                                                                        tmp_path, capsys):
    vectors = str(vectors_factory(_words(tiny_raw)))
    common = ["--data-dir", str(tiny_raw), "--splits", "train2014", "--vectors", vectors, "--weights",
              str(tiny_backbone), "--batch-size", "1"]
    assert main(["preprocess", "--out", str(tmp_path / "plain"), *common]) == 0
    sharded = tmp_path / "sharded"
    for index in range(3):
        assert main(["preprocess", "--out", str(sharded), *common, "--shard", f"{index}/3"]) == 0
        assert not (sharded / "preprocess.json").exists()  # a shard writes its share of the features only
    assert len(list((sharded / "train2014").glob("image_features.h5.shard-*-of-3"))) == 3
    assert "without --shard to merge" in capsys.readouterr().err

    assert main(["preprocess", "--out", str(sharded), *common]) == 0
    assert "merging the image features of 3 shards" in capsys.readouterr().err
    assert not list((sharded / "train2014").glob("*.shard-*"))
    for name in ("image_features.h5", "questions.h5"):
        with h5py.File(tmp_path / "plain" / "train2014" / name) as plain, h5py.File(sharded / "train2014" / name) as f:
            for key in plain:
                np.testing.assert_array_equal(f[key][...], plain[key][...], err_msg=f"{name}/{key}")

    assert main(["preprocess", "--out", str(tmp_path / "bad"), *common, "--shard", "3/3"]) == 1
    assert "--shard 3/3 is not INDEX/COUNT" in capsys.readouterr().err
    # More shards than batches: refused before any extraction, not "done" and then a merge of a billion files.
    assert main(["preprocess", "--out", str(tmp_path / "bad"), *common, "--shard", "0/1000000000"]) == 1
    assert ("--shard 0/1000000000 asks for more shards than the 3 batches of --batch-size 1 that train2014's "
            "3 images make; pass a COUNT of at most 3.") in capsys.readouterr().err
    assert not (tmp_path / "bad" / "train2014").exists()
