"""The synthetic demo dataset: official VQA v2 layout, balance, human answers, scene labels, relational questions."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa.demo import data as demo_data
from vqa.demo import relations
from vqa.demo.data import write_demo_dataset
from vqa.errors import VQAError

SPLITS = ("train2014", "val2014")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_dataset(out, train_images=300, val_images=100, seed=3)


def load(out: Path, split: str) -> tuple[dict, dict]:
    questions = json.loads((out / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
    annotations = json.loads((out / f"v2_mscoco_{split}_annotations.json").read_text())
    return questions, annotations


def all_annotations(out: Path) -> list[dict]:
    return [a for split in SPLITS for a in load(out, split)[1]["annotations"]]


def questions_by_id(out: Path) -> dict[int, str]:
    return {q["question_id"]: q["question"] for split in SPLITS for q in load(out, split)[0]["questions"]}


def simple_normalise(answer: str) -> str:
    """The part of the official normalisation the demo's answer variants exercise."""
    words = re.sub(r"[.!]", "", answer).lower().split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the"))


def test_files_have_the_official_keys(demo):
    out, summary = demo
    for split in SPLITS:
        questions, annotations = load(out, split)
        assert set(questions) == {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
        assert (questions["task_type"], questions["data_type"], questions["data_subtype"]) == (
            "Open-Ended", "mscoco", split)
        assert set(annotations) == {"info", "license", "data_subtype", "annotations"}
        assert annotations["data_subtype"] == split
        for question in questions["questions"]:
            assert set(question) == {"image_id", "question", "question_id"}
            assert question["question"].endswith("?") and question["question"][0].isupper()
        for annotation in annotations["annotations"]:
            assert set(annotation) == {"question_type", "multiple_choice_answer", "answers", "image_id",
                                       "answer_type", "question_id"}
            assert annotation["answer_type"] in ("yes/no", "number", "other")
        assert [q["question_id"] for q in questions["questions"]] == [
            a["question_id"] for a in annotations["annotations"]]
        assert summary["splits"][split]["questions"] == len(questions["questions"])
        assert sum(summary["splits"][split]["answer_types"].values()) == len(questions["questions"])
    assert set(json.loads((out / demo_data.SCENES_FILE).read_text())) == set(SPLITS)


def test_question_ids_follow_the_image_ids_and_images_differ_across_splits(demo):
    out, _ = demo
    image_ids = {}
    for split in SPLITS:
        questions = load(out, split)[0]["questions"]
        assert all(q["question_id"] // 1000 == q["image_id"] for q in questions)
        assert len({q["question_id"] for q in questions}) == len(questions)
        image_ids[split] = {q["image_id"] for q in questions}
    assert not image_ids["train2014"] & image_ids["val2014"]


def test_every_question_has_ten_answers_with_ids_1_to_10(demo):
    out, _ = demo
    confidences = Counter()
    for annotation in all_annotations(out):
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        confidences.update(a["answer_confidence"] for a in annotation["answers"])
    assert set(confidences) == {"yes", "maybe", "no"}
    assert confidences["yes"] > confidences["maybe"] > confidences["no"]


def test_identical_answers_are_always_the_lowercase_canonical_answer(demo):
    out, _ = demo
    num_varied = 0
    for annotation in all_annotations(out):
        texts = [a["answer"] for a in annotation["answers"]]
        canonical = annotation["multiple_choice_answer"]
        assert canonical == simple_normalise(canonical)
        if len(set(texts)) == 1:
            assert texts[0] == canonical
        else:
            num_varied += 1
        normalised = Counter(simple_normalise(t) for t in texts)
        assert normalised[canonical] >= 7, (canonical, texts)  # the canonical answer is the clear majority


def test_answers_vary_like_real_annotators(demo):
    out, _ = demo
    texts = Counter(a["answer"] for annotation in all_annotations(out) for a in annotation["answers"])
    for variant in ("Yes", "no.", "Red", "two", "none", "a circle"):
        assert texts[variant] > 0, variant
    disagreeing = sum(
        len({simple_normalise(a["answer"]) for a in annotation["answers"]}) > 1
        for annotation in all_annotations(out))
    assert 0.2 < disagreeing / len(all_annotations(out)) < 0.8


def test_answers_are_balanced_per_question_wording(demo):
    out, _ = demo
    text = questions_by_id(out)
    by_template: dict[str, Counter] = defaultdict(Counter)
    for split in SPLITS:
        by_wording: dict[str, Counter] = defaultdict(Counter)
        for annotation in load(out, split)[1]["annotations"]:
            by_wording[text[annotation["question_id"]]][annotation["multiple_choice_answer"]] += 1
            if annotation["answer_type"] == "yes/no":
                by_template[annotation["question_type"]][annotation["multiple_choice_answer"]] += 1
        for wording, counts in by_wording.items():
            total = sum(counts.values())
            # An answer is asked at most 2 ahead of its wording's rarest answer, so it ends at most 3 ahead.
            assert max(counts.values()) - min(counts.values()) <= 3, (wording, counts)
            if wording.startswith("How many") and total >= 30:
                assert len(counts) >= 3 and max(counts.values()) / total < 0.4, (wording, counts)
    assert set(by_template) == {"is there a", "is the", relations.BIGGER_TYPE}
    for counts in by_template.values():
        assert 0.45 <= counts["yes"] / sum(counts.values()) <= 0.55


def test_answers_agree_with_the_scene_labels(demo):
    out, _ = demo
    scenes = demo_data.read_scenes(out)
    text = questions_by_id(out)
    checked = Counter()
    for split in SPLITS:
        for annotation in load(out, split)[1]["annotations"]:
            scene = scenes[split][annotation["image_id"]]
            question, answer = text[annotation["question_id"]], annotation["multiple_choice_answer"]
            if match := re.fullmatch(r"How many (\w+)s are there\?", question):
                if match[1] == "object":
                    assert answer == str(len(scene))
                else:
                    assert answer == str(sum(o["shape"] == match[1] for o in scene))
            elif match := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
                present = any((o["color"], o["shape"]) == (match[1], match[2]) for o in scene)
                assert answer == ("yes" if present else "no")
            elif match := re.fullmatch(r"What color is the (\w+)\?", question):
                [obj] = [o for o in scene if o["shape"] == match[1]]  # only asked when unique
                assert answer == obj["color"]
            elif match := re.fullmatch(r"What shape is the (\w+) object\?", question):
                [obj] = [o for o in scene if o["color"] == match[1]]
                assert answer == obj["shape"]
            elif match := re.fullmatch(r"What is the color of the object just left of the (\w+)\?", question):
                [obj] = [o for o in scene if o["shape"] == match[1]]
                left = sorted(((o["box"][0] + o["box"][2]) / 2, o["color"]) for o in scene
                              if o["box"][1] < obj["box"][3] and o["box"][3] > obj["box"][1]
                              and o["box"][0] + o["box"][2] < obj["box"][0] + obj["box"][2])
                assert left and answer == left[-1][1]
                assert len(left) == 1 or left[-1][0] - left[-2][0] >= 8  # a clear nearest one
            elif match := re.fullmatch(r"Is the (\w+) bigger than the (\w+)\?", question):
                [first] = [o for o in scene if o["shape"] == match[1]]
                [second] = [o for o in scene if o["shape"] == match[2]]
                areas = [(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in (first, second)]
                assert max(areas) >= 1.25 * min(areas)
                assert answer == ("yes" if areas[0] > areas[1] else "no")
            elif match := re.fullmatch(r"Is the (\w+) (\w+)\?", question):
                [obj] = [o for o in scene if o["shape"] == match[1]]
                assert answer == ("yes" if obj["color"] == match[2] else "no")
            else:
                pytest.fail(f"unexpected question {question!r}")
            checked[annotation["question_type"]] += 1
    assert set(checked) == {"is there a", "is the", "how many", "what color is the", "what shape is the",
                            *relations.RELATIONAL_TYPES}


def test_relational_questions_are_asked_of_many_scenes(demo):
    out, summary = demo
    for split in SPLITS:
        images, types = summary["splits"][split]["images"], summary["splits"][split]["question_types"]
        for question_type in relations.RELATIONAL_TYPES:
            assert types[question_type] >= 0.3 * images, (split, types)
    scenes = [scene for split in SPLITS for scene in demo_data.read_scenes(out)[split].values()]
    assert sum(len(scene) == demo_data.MAX_OBJECTS for scene in scenes) >= 0.2 * len(scenes)


def _obj(shape: str, color: str, box: list[int]) -> dict:
    return {"shape": shape, "color": color, "box": box}


def test_relational_answers_on_a_built_scene():
    circle = _obj("circle", "red", [4, 4, 24, 24])  # top left, 20 x 20 = 400 px
    square = _obj("square", "blue", [36, 6, 62, 32])  # top right, 26 x 26 = 676 px, level with the circle
    triangle = _obj("triangle", "green", [40, 40, 58, 58])  # bottom right, 18 x 18 = 324 px, nothing on its left
    asked = relations.relational_questions([circle, square, triangle])

    # The circle is just left of the square, but nothing else is left of it: "the object on the left" would
    # answer, so the question is not asked.
    assert asked[relations.LEFT_OF_TYPE] == []
    bigger = {(q["question"], q["answer"]) for q in asked[relations.BIGGER_TYPE]}
    # circle against triangle: 400 / 324 = 1.23, under the 25% that makes the answer clear
    assert bigger == {("Is the circle bigger than the square?", "no"), ("Is the square bigger than the circle?", "yes"),
                      ("Is the square bigger than the triangle?", "yes"),
                      ("Is the triangle bigger than the square?", "no")}
    assert {q["answer_type"] for q in asked[relations.BIGGER_TYPE]} == {"yes/no"}

    # A shape that occurs twice is never named; the green triangle now has the yellow circle just left of it,
    # and each of the two right-hand shapes has another object on its left, in the other row.
    second_circle = _obj("circle", "yellow", [4, 38, 30, 64])
    asked = relations.relational_questions([circle, square, triangle, second_circle])
    assert {(q["question"], q["answer"]) for q in asked[relations.LEFT_OF_TYPE]} == {
        ("What is the color of the object just left of the square?", "red"),
        ("What is the color of the object just left of the triangle?", "yellow")}
    assert {q["answer_type"] for q in asked[relations.LEFT_OF_TYPE]} == {"other"}
    assert all("circle" not in q["question"] for q in asked[relations.BIGGER_TYPE])


def test_just_left_of_needs_a_clear_nearest_object_overlapping_vertically():
    target = _obj("square", "blue", [40, 20, 60, 40])  # centre x 50
    near, far = _obj("circle", "red", [24, 22, 36, 34]), _obj("triangle", "green", [2, 22, 14, 34])  # 30, 8
    above = _obj("circle", "purple", [30, 0, 38, 19])  # left of it, nearer, but no vertical overlap
    assert relations.just_left_of(target, [target, near, far, above]) is near
    close_second = _obj("triangle", "green", [18, 22, 30, 34])  # centre x 24: only 6 px behind the nearest
    assert relations.just_left_of(target, [target, near, close_second]) is None
    assert relations.just_left_of(near, [target, near]) is None  # nothing on its left


def test_images_decode_at_the_demo_size_and_objects_stay_apart(demo):
    out, _ = demo
    scenes = demo_data.read_scenes(out)
    for split in SPLITS:
        files = sorted((out / split).glob("*.jpg"))
        assert [f.name for f in files] == [f"COCO_{split}_{i:012d}.jpg" for i in sorted(scenes[split])]
        for path in files[:20]:
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE)
        for objects in scenes[split].values():
            assert 1 <= len(objects) <= demo_data.MAX_OBJECTS
            quadrants = [(o["box"][0] // 32, o["box"][1] // 32) for o in objects]
            assert len(set(quadrants)) == len(objects)


def test_object_pixels_have_the_labelled_colour(demo):
    out, _ = demo
    split = "val2014"
    for image_id, objects in list(demo_data.read_scenes(out)[split].items())[:20]:
        pixels = np.asarray(Image.open(out / split / f"COCO_{split}_{image_id:012d}.jpg"), dtype=float)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            centre = pixels[(y0 + y1) // 2 + 2, (x0 + x1) // 2]  # inside every shape, triangles too
            distances = {name: np.abs(centre - rgb).sum() for name, rgb in demo_data.COLORS.items()}
            assert min(distances, key=distances.get) == obj["color"]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    summaries = [write_demo_dataset(tmp_path / name, train_images=12, val_images=5, seed=seed)
                 for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    assert summaries[0]["splits"] == summaries[1]["splits"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 + 12 + 5
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    scenes = demo_data.SCENES_FILE
    assert (tmp_path / "a" / scenes).read_bytes() != (tmp_path / "c" / scenes).read_bytes()


@pytest.mark.parametrize("option", ["train_images", "val_images"])
def test_rejects_an_empty_split(tmp_path, option):
    with pytest.raises(VQAError, match=option.replace("_", "-")):
        write_demo_dataset(tmp_path, **{option: 0})
