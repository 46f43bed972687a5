"""The official VQA accuracy: each rule on numbers computed by hand, a randomised
comparison with an independent character-by-character oracle, and the real
VQA v2 sample."""

from __future__ import annotations

import functools
import json
import operator
import random
import re
from pathlib import Path

import pytest

from vqa import metric
from vqa.errors import VQAError

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqa_real_sample"


def annotation(question_id, humans, answer_type="other", question_type="what"):
    return {
        "question_id": question_id,
        "answer_type": answer_type,
        "question_type": question_type,
        "answers": [
            {"answer": human, "answer_confidence": "yes", "answer_id": number}
            for number, human in enumerate(humans, start=1)
        ],
    }


# --- clean and normalize_answer -------------------------------------------------


def test_clean_turns_newlines_and_tabs_into_spaces_and_strips():
    assert metric.clean("\tyes\n") == "yes"
    assert metric.clean("red\nand\twhite") == "red and white"
    assert metric.clean("  two  ") == "two"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3,000", "3000"),  # digit-comma-digit: marks vanish
        ("t-shirt", "t shirt"),  # a mark touching no space becomes a space
        ("black/white", "black white"),
        ("yes !", "yes"),  # a mark touching a space vanishes
        ("hi-there -x", "hithere x"),  # ... everywhere in the answer, once one touches a space
        ("1,000-2", "10002"),  # digit-comma-digit deletes every mark, not only commas
        ("a,b", "b"),  # comma becomes a space, then the article "a" goes
        ("a.b", "ab"),  # a period not followed by a digit is deleted
        ("2.5", "2.5"),  # ... one followed by a digit stays
        ("1.a", "1a"),  # the intended look-behind would keep this period; the official pattern does not
        ("yes.", "yes"),
        ("two", "2"),
        ("none", "0"),
        ("Ten", "10"),
        ("the dog", "dog"),
        ("a an the", ""),
        ("The Red Car", "red car"),
        ("dont", "don't"),
        ("Dont", "don't"),  # lower-cased before the table
        ("Im", "im"),  # the table's capitalised keys never match
        ("somebody'd", "somebodyd"),  # the table's odd entry, kept
        ("it's", "it's"),  # apostrophes are not punctuation here
        ("50 %", "50 %"),  # neither is %
        ("  spaced   out ", "spaced out"),
    ],
)
def test_normalize_answer_rules(raw, expected):
    assert metric.normalize_answer(raw) == expected


def test_at_most_32_periods_are_deleted():
    # The official code passes re.UNICODE (32) where sub() takes its count.
    assert metric.normalize_answer("x" + "." * 40) == "x" + "." * 8
    assert metric.normalize_answer("." * 32) == ""
    assert metric.normalize_answer("." * 33) == "."


# --- question_accuracy ----------------------------------------------------------


@pytest.mark.parametrize(
    "matches, expected",
    # k of 10 humans match: the k matching entries each see k-1 matching others,
    # the 10-k others see k.  k=1: 9*(1/3) / 10 = 0.3;  k=2: (2*(1/3) + 8*(2/3)) / 10 = 0.6;
    # k=3: (3*(2/3) + 7*1) / 10 = 0.9;  k=4: (4*1 + 6*1) / 10 = 1.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)],
)
def test_accuracy_by_number_of_matching_humans(matches, expected):
    humans = ["cat"] * matches + ["dog"] * (10 - matches)
    if matches == 10:
        humans[0] = "cat "  # cleaning makes it identical again
    assert metric.question_accuracy("cat", humans) == pytest.approx(expected, abs=1e-12)


def test_accuracy_is_a_leave_one_out_mean_not_a_capped_count():
    # x, x see one x each (1/3), y sees two (2/3): (1/3 + 1/3 + 2/3) / 3 = 4/9, not min(1, 2/3).
    assert metric.question_accuracy("x", ["x", "x", "y"]) == pytest.approx(4 / 9, abs=1e-15)


def test_no_normalisation_when_all_humans_agree_exactly():
    assert metric.question_accuracy("Yes", ["yes"] * 10) == 0.0
    assert metric.question_accuracy("yes.", ["yes"] * 10) == 0.0
    assert metric.question_accuracy("\tyes\n", ["yes"] * 10) == 1.0  # cleaning still applies
    assert metric.question_accuracy("yes", ["yes\n"] + ["yes"] * 9) == 1.0  # identical once cleaned


def test_normalisation_when_humans_differ():
    assert metric.question_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert metric.question_accuracy("Yes!", ["yes"] * 9 + ["no"]) == 1.0
    assert metric.question_accuracy("3,000", ["3000"] * 3 + ["many"] * 7) == pytest.approx(0.9)
    assert metric.question_accuracy("two", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]) == pytest.approx(0.6)
    # The human answers are normalised too: "The Dog" and "dog." both become "dog".
    assert metric.question_accuracy("dog", ["The Dog", "dog.", "cat"] + ["cat"] * 7) == pytest.approx(0.6)
    # Case differs, so the humans are not identical and everything is normalised.
    assert metric.question_accuracy("YES", ["Yes"] * 5 + ["yes"] * 5) == 1.0


# --- score ----------------------------------------------------------------------


def test_score_overall_per_type_and_per_question_by_hand():
    annotations = [
        annotation(1, ["yes"] * 10, "yes/no", "is this"),  # "yes" -> 1
        annotation(2, ["2"] * 2 + ["3"] * 8, "number", "how many"),  # "two" -> "2", 2 matches -> 0.6
        annotation(3, ["red"] * 3 + ["blue"] * 7, "other", "what color is the"),  # 3 matches -> 0.9
        annotation(4, ["no"] * 10, "yes/no", "is this"),  # "No" raw vs "no" -> 0
    ]
    results = [
        {"question_id": 4, "answer": "No"},
        {"question_id": 3, "answer": "red"},
        {"question_id": 2, "answer": "two"},
        {"question_id": 1, "answer": "yes"},
    ]
    scores = metric.score(annotations, results)
    assert scores.per_question == {1: 100.0, 2: 60.0, 3: 90.0, 4: 0.0}
    assert scores.overall == 62.5  # (1 + 0.6 + 0.9 + 0) / 4
    assert scores.per_answer_type == {"yes/no": 50.0, "number": 60.0, "other": 90.0}
    assert scores.per_question_type == {"is this": 50.0, "how many": 60.0, "what color is the": 90.0}
    assert scores.to_json() == {
        "overall": 62.5,
        "perAnswerType": {"yes/no": 50.0, "number": 60.0, "other": 90.0},
        "perQuestionType": {"is this": 50.0, "how many": 60.0, "what color is the": 90.0},
    }


def test_rounding_to_two_decimals():
    # (1 + 0.3 + 0) / 3 = 0.4333.. -> 43.33; the "yes/no" pair (1 + 0.3) / 2 = 65.0.
    annotations = [
        annotation(1, ["a1"] * 10, "yes/no"),
        annotation(2, ["b1"] + ["z"] * 9, "yes/no"),
        annotation(3, ["c1"] * 10, "number"),
    ]
    results = [
        {"question_id": 1, "answer": "a1"}, {"question_id": 2, "answer": "b1"}, {"question_id": 3, "answer": "x"}
    ]
    scores = metric.score(annotations, results)
    assert scores.overall == 43.33
    assert scores.per_answer_type == {"yes/no": 65.0, "number": 0.0}
    # 2 of 3 right: 66.666.. -> 66.67.
    results[2]["answer"] = "c1"
    results[1]["answer"] = "x"
    assert metric.score(annotations, results).overall == 66.67


def test_rounding_is_python3_round_half_even_on_an_exact_tie():
    # 1 right of 800: 100 * 1 / 800 = 0.125 exactly; Python 3 rounds the tie to 0.12.
    annotations = [annotation(i, ["x"] * 10) for i in range(800)]
    results = [{"question_id": i, "answer": "x" if i == 0 else "y"} for i in range(800)]
    assert metric.score(annotations, results).overall == 0.12


def test_score_does_not_modify_its_inputs():
    annotations = [annotation(1, ["Yes!", "no"] + ["yes"] * 8)]
    results = [{"question_id": 1, "answer": " Yes\t"}]
    before = json.dumps([annotations, results])
    metric.score(annotations, results)
    assert json.dumps([annotations, results]) == before


# --- validation -----------------------------------------------------------------


def three_annotations():
    return [annotation(question_id, ["yes"] * 10) for question_id in (1, 2, 3)]


def test_results_must_be_a_list():
    with pytest.raises(VQAError, match="JSON list"):
        metric.score(three_annotations(), {"1": "yes"})


def test_result_without_answer():
    with pytest.raises(VQAError, match='Result number 2 is not an object with "question_id" and "answer"'):
        metric.score(three_annotations(), [{"question_id": 1, "answer": "yes"}, {"question_id": 2}])


def test_non_string_answer_names_the_question():
    with pytest.raises(VQAError, match="answer for question 2 is a int, not a string"):
        metric.score(three_annotations(), [{"question_id": 2, "answer": 3}])


def test_duplicate_question_ids_named_with_count():
    results = [{"question_id": question_id, "answer": "yes"} for question_id in (1, 2, 2, 3, 2)]
    with pytest.raises(VQAError, match="Question 2 is answered 3 times"):
        metric.score(three_annotations(), results)


def test_missing_and_extra_questions_counted_and_named():
    results = [{"question_id": question_id, "answer": "yes"} for question_id in (1, 4, 5)]
    with pytest.raises(VQAError, match=r"2 missing \(2, 3\) and 2 extra \(4, 5\)"):
        metric.score(three_annotations(), results)
    with pytest.raises(VQAError, match=r"3 missing \(1, 2, 3\) and 0 extra;"):
        metric.score(three_annotations(), [])


def test_many_missing_questions_shows_a_few():
    annotations = [annotation(question_id, ["yes"] * 10) for question_id in range(100)]
    with pytest.raises(VQAError, match=r"99 missing \(e\.g\. 1, 2, 3, 4, 5\) and 0 extra"):
        metric.score(annotations, [{"question_id": 0, "answer": "yes"}])


def test_questions_of_another_split():
    results = [{"question_id": question_id, "answer": "yes"} for question_id in (1, 2, 3)]
    questions = [{"question_id": 1, "image_id": 0, "question": "?"}]
    with pytest.raises(VQAError, match=r"2 annotated questions are not in the questions file \(2, 3\)"):
        metric.score(three_annotations(), results, questions)


def test_annotation_without_answers():
    annotations = three_annotations()
    annotations[1]["answers"] = []
    results = [{"question_id": question_id, "answer": "yes"} for question_id in (1, 2, 3)]
    with pytest.raises(VQAError, match="question 2 needs a non-empty list"):
        metric.score(annotations, results)


# --- score_files ----------------------------------------------------------------


def write_split(folder: Path, annotations, results):
    questions = {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
        "questions": [{"image_id": 1, "question": "?", "question_id": item["question_id"]} for item in annotations],
    }
    paths = {name: folder / f"{name}.json" for name in ("questions", "annotations", "results")}
    paths["questions"].write_text(json.dumps(questions))
    paths["annotations"].write_text(json.dumps({"info": {}, "license": {}, "data_subtype": "val2014",
                                                "annotations": annotations}))
    paths["results"].write_text(json.dumps(results))
    return paths


def test_score_files_writes_per_question_accuracies(tmp_path):
    annotations = [annotation(7, ["red"] * 3 + ["blue"] * 7), annotation(8, ["no"] * 10, "yes/no")]
    results = [{"question_id": 8, "answer": "no"}, {"question_id": 7, "answer": "Red"}]
    paths = write_split(tmp_path, annotations, results)
    out = tmp_path / "eval" / "per_question.json"
    scores = metric.score_files(paths["questions"], paths["annotations"], paths["results"], out)
    assert scores.to_json() == {"overall": 95.0, "perAnswerType": {"other": 90.0, "yes/no": 100.0},
                                "perQuestionType": {"what": 95.0}}
    assert json.loads(out.read_text()) == {"7": 90.0, "8": 100.0}


def test_score_files_names_the_wrong_file(tmp_path):
    annotations = [annotation(7, ["red"] * 10)]
    paths = write_split(tmp_path, annotations, [{"question_id": 9, "answer": "red"}])
    with pytest.raises(VQAError, match=rf"^{re.escape(str(paths['results']))}: .*1 missing \(7\) and 1 extra \(9\)"):
        metric.score_files(paths["questions"], paths["annotations"], paths["results"])
    # Swapped arguments: the annotations file has no "questions" list.
    with pytest.raises(VQAError, match=r"annotations\.json has no \"questions\" list"):
        metric.score_files(paths["annotations"], paths["questions"], paths["results"])
    with pytest.raises(VQAError, match="must hold a JSON list"):
        metric.score_files(paths["questions"], paths["annotations"], paths["annotations"])
    with pytest.raises(VQAError, match="does not exist"):
        metric.score_files(paths["questions"], paths["annotations"], tmp_path / "nope.json")
    paths["results"].write_text('[{"question_id": 7, "answer": "red"}')  # truncated
    with pytest.raises(VQAError, match="not valid JSON"):
        metric.score_files(paths["questions"], paths["annotations"], paths["results"])


# --- the real VQA v2 sample -----------------------------------------------------


def load_real_sample():
    folder = REAL_SAMPLE / "train2014"
    if not folder.is_dir():
        pytest.skip(f"real VQA v2 sample not found at {folder}")
    return folder / "v2_OpenEnded_mscoco_train2014_questions.json", folder / "v2_mscoco_train2014_annotations.json"


def test_real_sample_multiple_choice_answers_score_100(tmp_path):
    questions_path, annotations_path = load_real_sample()
    annotations = json.loads(annotations_path.read_text())["annotations"]
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(
        [{"question_id": item["question_id"], "answer": item["multiple_choice_answer"]} for item in annotations]
    ))
    scores = metric.score_files(questions_path, annotations_path, results_path)
    # Every multiple-choice answer is given by at least 8 of the 10 humans.
    assert scores.overall == 100.0
    assert set(scores.per_answer_type.values()) == {100.0}
    assert set(scores.per_question_type.values()) == {100.0}


def test_real_sample_by_hand(tmp_path):
    questions_path, annotations_path = load_real_sample()
    predictions = {
        458752000: "netting",  # 1 of 10 humans -> 0.3
        458752001: "catcher",  # 1 of 10 -> 0.3
        458752002: "Orange",  # all ten say "orange": compared raw -> 0
        458752003: "no",  # 1 of 10 -> 0.3
        262146000: "white",  # 10 of 10 -> 1
    }
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps([{"question_id": key, "answer": value} for key, value in predictions.items()]))
    scores = metric.score_files(questions_path, annotations_path, results_path)
    assert scores.overall == 38.0  # (0.3 + 0.3 + 0 + 0.3 + 1) / 5
    assert scores.per_answer_type == {"other": 40.0, "yes/no": 30.0}  # (0.3 + 0.3 + 0 + 1) / 4
    assert scores.per_question_type == {"what is this": 30.0, "what": 30.0, "what color is the": 50.0, "is this": 30.0}
    assert scores.per_question == {458752000: 30.0, 458752001: 30.0, 458752002: 0.0, 458752003: 30.0,
                                   262146000: 100.0}


# --- randomised comparison with an independent oracle ----------------------------

ORACLE_MARKS = frozenset(';/[]"{}()=+\\_-><@`,?!')
ORACLE_NUMBERS = dict(zip("none zero one two three four five six seven eight nine ten".split(),
                          "0 0 1 2 3 4 5 6 7 8 9 10".split()))


def oracle_clean(text):
    chars = [" " if ch in "\n\t" else ch for ch in text]
    while chars and chars[0].isspace():
        chars.pop(0)
    while chars and chars[-1].isspace():
        chars.pop()
    return "".join(chars)


def oracle_normalize(text):
    """The rules written out one character at a time."""
    n = len(text)
    digit_comma_digit = any(
        text[i] == "," and text[i - 1].isdecimal() and text[i + 1].isdecimal() for i in range(1, n - 1)
    )
    touching_space = set()
    for i, ch in enumerate(text):
        if ch == " ":
            touching_space.update(text[max(i - 1, 0):i] + text[i + 1:i + 2])
    chars = []
    for ch in text:
        if ch not in ORACLE_MARKS:
            chars.append(ch)
        elif not (digit_comma_digit or ch in touching_space):
            chars.append(" ")
    kept, removed = [], 0
    for i, ch in enumerate(chars):
        followed_by_digit = i + 1 < len(chars) and chars[i + 1].isdecimal()
        if ch == "." and not followed_by_digit and removed < 32:
            removed += 1
        else:
            kept.append(ch)
    words, word = [], ""
    for ch in "".join(kept).lower() + " ":
        if ch.isspace():
            if word:
                words.append(word)
            word = ""
        else:
            word += ch
    words = [ORACLE_NUMBERS.get(word, word) for word in words]
    words = [word for word in words if word not in ("a", "an", "the")]
    return " ".join(metric.CONTRACTIONS.get(word, word) for word in words)


def oracle_score(annotations, results):
    predictions = {item["question_id"]: item["answer"] for item in results}
    per_question, groups = {}, {}
    for item in annotations:
        humans = [oracle_clean(entry["answer"]) for entry in item["answers"]]
        prediction = oracle_clean(predictions[item["question_id"]])
        if any(human != humans[0] for human in humans):
            humans = [oracle_normalize(human) for human in humans]
            prediction = oracle_normalize(prediction)
        credits = [min(1, (humans[:i] + humans[i + 1:]).count(prediction) / 3) for i in range(len(humans))]
        accuracy = functools.reduce(operator.add, credits, 0.0) / len(credits)
        per_question[item["question_id"]] = round(100 * accuracy, 2)
        for key in (("overall",), ("type", item["answer_type"]), ("qtype", item["question_type"])):
            groups.setdefault(key, []).append(accuracy)
    summary = {key: round(100 * functools.reduce(operator.add, values, 0.0) / len(values), 2)
               for key, values in groups.items()}
    return {
        "overall": summary[("overall",)],
        "perAnswerType": {key[1]: value for key, value in summary.items() if key[0] == "type"},
        "perQuestionType": {key[1]: value for key, value in summary.items() if key[0] == "qtype"},
    }, per_question


ANSWER_POOL = [
    "yes", "Yes", "YES", "no", "No", "two", "2", "Two", "none", "0", "zero", "ten", "10", "a dog", "the dog", "dog",
    "The Dog", "t-shirt", "t shirt", "3,000", "3000", "3, 000", "3.5", "3.", ".5", "a.b", "ab", "1.a", "a.5", "e.g.",
    "dont", "don't", "Dont", "It's", "its", "itll", "one", "1 ", "\tred\n", "red", "red!", "(red)", "red ?", "yes.",
    "yes .", "a", "the", "an", "x-ray", "...", "1,2,3", "1, 2", "1,000-2", "Im", "i'm", "cant", "won't", "wont",
    "o'clock", "oclock", "somebody'd", "somebodyd", "50 %", "$5", "#1", "black/white", "black & white",
    "black and white", "left-side", "a-b c", "\\", "_", "{a}", "[b]", "<3", "@home", "`x`", "x" + "." * 40,
    "." * 33 + "5", "hes", "he's", "whats", "y'allll", "'ows'at", "yes!", "!yes", "yes;no", "'twas", "twas",
    "a b  c", "\n\n", "", "３,０００", "İ",
]
ANSWER_CHARS = "ab yY.,-!?;/'\"()[]{}=+\\_<>@`019\t\n:#$%&*~^|"


def random_answer(rng):
    draw = rng.random()
    if draw < 0.7:
        return rng.choice(ANSWER_POOL)
    if draw < 0.9:
        return "".join(rng.choice(ANSWER_CHARS) for _ in range(rng.randint(0, 8)))
    return rng.choice(ANSWER_POOL) + rng.choice(" .,-!") + rng.choice(ANSWER_POOL)


def random_split(rng, size):
    annotations, results = [], []
    for question_id in rng.sample(range(10 ** 6), size):
        if rng.random() < 0.2:
            humans = [random_answer(rng)] * 10
        else:
            few = [random_answer(rng) for _ in range(rng.randint(1, 4))]
            humans = [rng.choice(few) for _ in range(10)]
        annotations.append(annotation(question_id, humans, rng.choice(["yes/no", "number", "other"]),
                                      rng.choice(["what", "is the", "how many", "what color is the"])))
        prediction = rng.choice(humans) if rng.random() < 0.5 else random_answer(rng)
        if rng.random() < 0.2:
            prediction = prediction.upper()
        results.append({"question_id": question_id, "answer": prediction})
    rng.shuffle(results)
    return annotations, results


def test_normalize_answer_matches_the_oracle():
    rng = random.Random(7)
    for _ in range(20000):
        answer = metric.clean(random_answer(rng))
        assert metric.normalize_answer(answer) == oracle_normalize(answer), repr(answer)


@pytest.mark.parametrize("seed, size", [(1, 3000), (2, 3), (3, 1), (4, 500)])
def test_score_matches_the_oracle_exactly(seed, size):
    annotations, results = random_split(random.Random(seed), size)
    expected_summary, expected_per_question = oracle_score(annotations, results)
    scores = metric.score(annotations, results)
    assert scores.to_json() == expected_summary
    assert scores.per_question == expected_per_question
