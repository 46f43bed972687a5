"""Answer vocabulary, soft scores and answers.json, on hand-computed cases and the
real VQA v2 sample."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vqa import answers, metric
from vqa.errors import VQAError

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqa_real_sample"


def mc(question_id, answer):
    return {"question_id": question_id, "multiple_choice_answer": answer}


def test_vocabulary_counts_normalised_answers_once_per_question():
    annotations = [
        mc(1, "yes"), mc(2, "Yes"), mc(3, "yes."), mc(4, "no"), mc(5, "two"), mc(6, "2"),
        mc(7, "the dog"), mc(8, "dog"), mc(9, "cat"), mc(10, "no"),
    ]
    vocabulary, counts = answers.answer_vocabulary(annotations, top_k=10)
    # yes x3; 2, dog, no x2 (ties by string); cat x1.
    assert vocabulary == ["yes", "2", "dog", "no", "cat"]
    assert counts == [3, 2, 2, 2, 1]
    assert answers.answer_vocabulary(annotations, top_k=2) == (["yes", "2"], [3, 2])


def test_vocabulary_does_not_depend_on_file_order():
    annotations = [mc(i, answer) for i, answer in enumerate(["b", "e", "c", "b", "e", "c", "d"])]
    expected = (["b", "c", "e", "d"], [2, 2, 2, 1])
    assert answers.answer_vocabulary(annotations, 4) == expected
    assert answers.answer_vocabulary(annotations[::-1], 4) == expected


def test_vocabulary_keeps_what_normalisation_leaves_of_a_letter():
    # The metric turns the answer "a" (an article) into "", so that is the class a model must predict.
    assert answers.answer_vocabulary([mc(1, "a"), mc(2, "A"), mc(3, "b")], 5) == (["", "b"], [2, 1])


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True])
def test_vocabulary_rejects_a_bad_size(top_k):
    with pytest.raises(VQAError, match="positive integer"):
        answers.answer_vocabulary([mc(1, "yes")], top_k)


def test_vocabulary_needs_multiple_choice_answers():
    with pytest.raises(VQAError, match="question 5 has no multiple_choice_answer"):
        answers.answer_vocabulary([mc(1, "yes"), {"question_id": 5}], 10)
    with pytest.raises(VQAError, match="no annotations"):
        answers.answer_vocabulary([], 10)


def test_answer_scores_by_hand():
    index = {"yes": 0, "no": 1, "2": 2, "maybe": 3, "cat": 4}
    humans = ["yes", "yes", "Yes.", "no", "no", "no", "two", "2", "maybe", "maybe"]
    # yes x3 -> 0.9, no x3 -> 0.9, 2 x2 ("two" and "2") -> 0.6, maybe x2 -> 0.6; cat absent; "Yes." merges.
    scores = answers.answer_scores(humans, index)
    assert [class_index for class_index, _ in scores] == [0, 1, 2, 3]
    assert [value for _, value in scores] == pytest.approx([0.9, 0.9, 0.6, 0.6], abs=1e-12)


def test_answer_scores_leave_out_answers_outside_the_vocabulary():
    assert answers.answer_scores(["zebra"] * 9 + ["yes"], {"yes": 0}) == [(0, pytest.approx(0.3))]
    assert answers.answer_scores(["zebra"] * 10, {"yes": 0}) == []


def test_answer_scores_follow_the_metric_when_humans_agree_exactly():
    # Ten identical "Yes" are compared raw by the official metric: "yes" earns 0.
    assert answers.answer_scores(["Yes"] * 10, {"yes": 0}) == []
    assert answers.answer_scores(["yes"] * 10, {"yes": 0}) == [(0, 1.0)]


def leave_one_out(answer, humans):
    """min(1, matches/3) averaged over the leave-one-out subsets, on normalised answers."""
    normalised = [answers.canonical_answer(human) for human in humans]
    credits = [min(1.0, (normalised[:i] + normalised[i + 1:]).count(answer) / 3) for i in range(len(humans))]
    return sum(credits) / len(credits)


def test_answer_scores_are_the_official_accuracy_of_every_class():
    rng = random.Random(3)
    pool = ["yes", "Yes", "no", "two", "2", "the cat", "cat", "t-shirt", "t shirt", "red!", "red", "dont", "don't",
            "3,000", "3000", "x-ray", "blue"]
    vocabulary = sorted({answers.canonical_answer(answer) for answer in pool})
    index = answers.build_answer_index(vocabulary)
    for _ in range(500):
        few = rng.sample(pool, rng.randint(1, 4))
        humans = [rng.choice(few) for _ in range(10)]
        expected = []
        for class_index, answer in enumerate(vocabulary):
            accuracy = metric.question_accuracy(answer, humans)
            if accuracy > 0:
                expected.append((class_index, accuracy))
                if len({metric.clean(human) for human in humans}) > 1:
                    assert accuracy == pytest.approx(leave_one_out(answer, humans), abs=1e-12)
        assert answers.answer_scores(humans, index) == expected
        assert len(expected) <= 10


def test_multiple_choice_index():
    index = {"yes": 0, "2": 1}
    assert answers.multiple_choice_index("Yes", index) == 0
    assert answers.multiple_choice_index("two", index) == 1
    assert answers.multiple_choice_index("zebra", index) == -1


def test_answers_file_round_trip(tmp_path):
    path = tmp_path / "out" / "answers.json"
    answers.write_answers(path.parent, ["yes", "no", "2"], [30, 20, 10])
    assert answers.read_answers(path.parent) == ["yes", "no", "2"]
    assert json.loads(path.read_text()) == {"answers": ["yes", "no", "2"], "counts": [30, 20, 10]}
    assert [p.name for p in path.parent.iterdir()] == ["answers.json"]  # no temporary file left


def test_read_answers_errors(tmp_path):
    path = tmp_path / "answers.json"
    with pytest.raises(VQAError, match="does not exist"):
        answers.read_answers(tmp_path)
    path.write_text('{"answers": ["yes"')
    with pytest.raises(VQAError, match="not valid JSON"):
        answers.read_answers(tmp_path)
    path.write_text('["yes", "no"]')
    with pytest.raises(VQAError, match='needs a non-empty "answers" list of strings'):
        answers.read_answers(tmp_path)
    path.write_text('{"answers": ["yes", 2]}')
    with pytest.raises(VQAError, match='needs a non-empty "answers" list of strings'):
        answers.read_answers(tmp_path)
    path.write_text('{"answers": ["yes", "no", "yes"]}')
    with pytest.raises(VQAError, match="lists 'yes' more than once"):
        answers.read_answers(tmp_path)


def test_real_sample_vocabulary_and_scores():
    path = REAL_SAMPLE / "train2014" / "v2_mscoco_train2014_annotations.json"
    if not path.is_file():
        pytest.skip(f"real VQA v2 sample not found at {path}")
    annotations = json.loads(path.read_text())["annotations"]
    vocabulary, counts = answers.answer_vocabulary(annotations, top_k=1000)
    assert vocabulary == ["net", "orange", "pitcher", "white", "yes"]
    assert counts == [1, 1, 1, 1, 1]
    index = answers.build_answer_index(vocabulary)
    by_id = {item["question_id"]: [entry["answer"] for entry in item["answers"]] for item in annotations}
    # 458752000: net x8 (netting, mesh outside the vocabulary) -> net 1.0.
    assert answers.answer_scores(by_id[458752000], index) == [(0, 1.0)]
    # 458752003: yes x9, no x1 -> yes 1.0, "no" outside the vocabulary.
    assert answers.answer_scores(by_id[458752003], index) == [(4, 1.0)]
    index["netting"] = 5
    assert answers.answer_scores(by_id[458752000], index) == [(0, 1.0), (5, pytest.approx(0.3))]
    assert [answers.multiple_choice_index(item["multiple_choice_answer"], index) for item in annotations] == [
        0, 2, 1, 4, 3
    ]
