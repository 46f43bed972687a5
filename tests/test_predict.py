"""`vqa predict` on a tiny trained run: top-k answers, batched files, notes, and one-sentence errors.

The run is built once for the module: official-layout JSON and JPEGs in tmp_path, the
stand-in .keras backbone (32x32 input: it resizes any image, COCO photos included) and
stand-in word vectors, an LSTM of 8 units trained for one epoch.
"""

import json
import shutil
import subprocess
import sys

import pytest

from helpers import write_official_split
from vqa.cli import main
from vqa.errors import VQAError

pytestmark = pytest.mark.slow  # one tiny training for the module: ~10 s on 2 cores

QUESTIONS = [("is there a cat ?", "yes", "yes/no"), ("how many dogs are there ?", "2", "number"),
             ("what color is the car ?", "red", "other"), ("what is the man holding ?", "umbrella", "other")]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone, vectors_factory):
    """A trained tiny run (no validation split, to keep it quick) and the images it was trained on."""
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from helpers import preprocess
    from vqa.train import train

    root = tmp_path_factory.mktemp("predict")
    items = [{"image_id": image_id, "question": question, "answers": [answer] * 8 + ["no"] * 2, "answer_type": kind}
             for image_id in (1, 2, 3, 4) for question, answer, kind in QUESTIONS]
    write_official_split(root / "raw", "train2014", items)
    words = {word for question, _, _ in QUESTIONS for word in question.split()}
    out = root / "processed"
    preprocess(root / "raw", out, ["train2014"], vectors=str(vectors_factory(words)), weights=str(tiny_backbone),
               log=lambda message: None)
    config = Config(data=DataConfig(data_dir=str(out), val_split=""),
                    model=ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8),
                    train=TrainConfig(epochs=1, batch_size=16))
    train(out, root / "run", config, log=lambda message: None)
    return {"run": root / "run", "images": sorted((root / "raw" / "train2014").glob("*.jpg")), "root": root}


@pytest.fixture(scope="module")
def predictor(run):
    """The run loaded once, as ``vqa predict --questions-file`` does for all its questions."""
    from vqa.predict import Predictor

    return Predictor(run["run"])


def _predict_json(capsys, run_dir, *args) -> list[dict]:
    assert main(["predict", "--run", str(run_dir), *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def test_top_k_answers_come_with_descending_scores(run, capsys):
    [answer] = _predict_json(capsys, run["run"], "--image", str(run["images"][0]),
                             "--question", "What color is the car?", "--top-k", "3")
    vocabulary = json.loads((run["run"] / "answers.json").read_text())["answers"]
    assert answer["question"] == "What color is the car?" and answer["image"] == str(run["images"][0])
    assert len(answer["answers"]) == 3
    assert len({a["answer"] for a in answer["answers"]}) == 3
    assert all(a["answer"] in vocabulary and 0.0 <= a["score"] <= 1.0 for a in answer["answers"])
    scores = [a["score"] for a in answer["answers"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["notes"] == []


def test_top_k_larger_than_the_vocabulary_gives_every_answer(run, capsys):
    [answer] = _predict_json(capsys, run["run"], "--image", str(run["images"][0]), "--question", "is there a cat?",
                             "--top-k", "500")
    vocabulary = json.loads((run["run"] / "answers.json").read_text())["answers"]
    assert sorted(a["answer"] for a in answer["answers"]) == sorted(vocabulary)


def test_plain_output_lists_ranked_answers(run, capsys):
    assert main(["predict", "--run", str(run["run"]), "--image", str(run["images"][1]),
                 "--question", "how many dogs are there?", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"Q: how many dogs are there?  [{run['images'][1]}]"
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2."]


def test_questions_file_gives_the_answers_of_one_by_one_calls(run, predictor, capsys, tmp_path):
    asked = [(run["images"][0], "is there a cat?"), (run["images"][1], "what color is the car?"),
             (run["images"][0], "how many dogs are there?"), (run["images"][2], "what is the man holding?")]
    questions_file = tmp_path / "questions.jsonl"
    shutil.copy(run["images"][2], tmp_path / "relative.jpg")  # a relative path reads beside the file
    lines = [{"image": str(image), "question": question} for image, question in asked[:3]]
    lines.append({"image": "relative.jpg", "question": asked[3][1]})
    questions_file.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    batched = _predict_json(capsys, run["run"], "--questions-file", str(questions_file), "--top-k", "3")
    first_alone = _predict_json(capsys, run["run"], "--image", str(asked[0][0]), "--question", asked[0][1],
                                "--top-k", "3")
    one_by_one = first_alone + [predictor.answer([image], [question], top_k=3)[0].to_json()
                                for image, question in asked[1:]]
    assert [b["question"] for b in batched] == [q for _, q in asked]
    for together, alone in zip(batched, one_by_one):
        assert [a["answer"] for a in together["answers"]] == [a["answer"] for a in alone["answers"]]
        assert [a["score"] for a in together["answers"]] == pytest.approx([a["score"] for a in alone["answers"]],
                                                                          abs=2e-4)


def test_a_question_of_unknown_words_is_answered_with_a_note(run, predictor):
    [answer] = predictor.answer([run["images"][0]], ["xyzzy plugh?"], top_k=3)
    assert len(answer.answers) == 3
    assert answer.notes == ["none of the question's words are in the run's vocabulary, so the answer rests on "
                            "the image alone"]


def test_some_unknown_words_are_named(run, predictor):
    [answer] = predictor.answer([run["images"][0]], ["what colour is the car?"])
    assert answer.notes == ["words not in the run's vocabulary (read as unknown): colour"]


def test_a_very_long_question_is_truncated_with_a_note(run, capsys):
    question = "is there a cat " * 20 + "?"
    assert main(["predict", "--run", str(run["run"]), "--image", str(run["images"][0]), "--question", question]) == 0
    captured = capsys.readouterr()
    assert "note: the question has 81 tokens; only the first 25 were read" in captured.err
    assert captured.out.startswith("Q: is there a cat")


def test_non_english_and_emoji_questions_are_answered(run, predictor):
    questions = ["¿De qué color es el coche?", "what color is the 🚗?", "这是什么？", "🐱🐶"]
    answers = predictor.answer([run["images"][0]] * len(questions), questions, top_k=3)
    assert [answer.question for answer in answers] == questions
    assert all(len(answer.answers) == 3 and answer.notes for answer in answers)
    assert answers[1].notes == ["words not in the run's vocabulary (read as unknown): 🚗"]
    assert "none of the question's words" in answers[3].notes[0]


def test_a_real_coco_photo_goes_through_the_runs_backbone(run, predictor, real_sample):
    photo = real_sample / "images" / "COCO_val2014_000000000192.jpg"
    [answer] = predictor.answer([photo], ["what is the man holding?"], top_k=2)
    assert answer.image == str(photo) and len(answer.answers) == 2
    features = predictor.image_features([photo])
    assert features.shape == (1, 8) and features.any()


def test_a_run_trained_on_mat_features_explains_it_has_no_backbone(run, capsys, tmp_path):
    mat_run = tmp_path / "mat_run"
    shutil.copytree(run["run"], mat_run)
    from vqa import backbone as backbone_lib

    backbone_lib.write_backbone(mat_run, backbone_lib.BackboneSpec.for_mat("/data/vgg_feats.mat", 8))
    assert main(["predict", "--run", str(mat_run), "--image", str(run["images"][0]),
                 "--question", "is there a cat?"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert f"{mat_run} was trained on image features imported from a .mat file, so it has no image backbone" in error
    assert "vqa preprocess --features-mat FILE --id-map MAP" in error

    from vqa.predict import Predictor

    with pytest.raises(VQAError, match="has no image backbone"):
        Predictor(mat_run).answer([run["images"][0]], ["is there a cat?"])


def test_questions_file_errors_name_the_line(run, capsys, tmp_path):
    questions_file = tmp_path / "q.jsonl"
    questions_file.write_text(json.dumps({"image": str(run["images"][0]), "question": "is there a cat?"}) + "\n"
                              + json.dumps({"image": "nowhere.jpg", "question": "is there a cat?"}) + "\n")
    assert main(["predict", "--run", str(run["run"]), "--questions-file", str(questions_file)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {questions_file} line 2: image nowhere.jpg does not exist."

    questions_file.write_text('{"image": "a.jpg", "question": "   "}\n')
    assert main(["predict", "--run", str(run["run"]), "--questions-file", str(questions_file)]) == 1
    assert f"{questions_file} line 1 has an empty question" in capsys.readouterr().err

    questions_file.write_text('{"image": "a.jpg", "question": "is there')
    assert main(["predict", "--run", str(run["run"]), "--questions-file", str(questions_file)]) == 1
    assert f"{questions_file} line 1 is not JSON" in capsys.readouterr().err


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqa", "predict", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _assert_one_sentence(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [expected]


def test_input_errors_in_a_real_process(run, tmp_path):
    """Each is found before a model is loaded, so these processes end in well under a second or two."""
    image = run["images"][0]
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a picture")
    other_version = tmp_path / "old_run"
    other_version.mkdir()
    (other_version / "run.json").write_text(json.dumps({"format_version": 0}))

    _assert_one_sentence(_run_cli("--run", run["run"], "--image", tmp_path / "nowhere.jpg", "--question", "what?"),
                         f"error: --image: image {tmp_path / 'nowhere.jpg'} does not exist.")
    _assert_one_sentence(_run_cli("--run", run["run"], "--image", text_file, "--question", "what?"),
                         f"error: --image: image {text_file} cannot be read (not an image file); "
                         "pass a JPEG or PNG file.")
    _assert_one_sentence(_run_cli("--run", run["run"], "--image", image, "--question", "  \t "),
                         'error: --question is empty; ask a question about the image, e.g. "what color is the car?".')
    _assert_one_sentence(_run_cli("--run", tmp_path, "--image", image, "--question", "what?"),
                         f"error: --run {tmp_path} is not a run folder (no run.json); pass a folder made by "
                         "`vqa train --out`.")
    _assert_one_sentence(_run_cli("--run", other_version, "--image", image, "--question", "what?"),
                         f"error: {other_version} was trained by another version of vqa (run format 0, this one "
                         "reads 1); train it again.")


def test_a_truncated_image_is_reported_in_one_sentence(run, capsys, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(run["images"][0].read_bytes()[:200])
    assert main(["predict", "--run", str(run["run"]), "--image", str(broken), "--question", "what?"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --image: image {broken} cannot be read (corrupt or truncated")
    assert error.count("\n") == 0


def test_a_png_with_transparency_is_answered(run, predictor, tmp_path):
    from PIL import Image

    png = tmp_path / "drawing.png"
    Image.new("RGBA", (50, 30), (255, 0, 0, 128)).save(png)
    [answer] = predictor.answer([png], ["is there a cat?"], top_k=2)
    assert len(answer.answers) == 2
