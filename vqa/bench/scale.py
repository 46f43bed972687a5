"""Section ``scale``: time and memory of preprocessing (answer targets, token ids) and of one
training epoch at 1x and 4x the number of questions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from vqa.bench.child import RSSSampler
from vqa.bench.report import summary_row
from vqa.bench.settings import MAX_QUESTION_LENGTH, NUM_ANSWERS, Sizes
from vqa.bench.synthetic import vqa_like_split

LINEAR_TOLERANCE = 1.25  # a per-question time ratio 4x/1x up to this counts as linear growth


def run(sizes: Sizes, work: Path, log: Callable[[str], None], training: dict | None = None) -> dict:
    """Time and memory of preprocessing (ids, targets) and of a training epoch at 1x and 4x the questions.

    The training side comes from the training section's result (``training``): its main
    run is the 4x point, its ``scale_1x`` run the 1x point, both with ten questions per
    image. Without it (or when that section failed) only preprocessing is measured.
    """
    from vqa import answers as answers_lib
    from vqa import text

    steps: dict[str, dict] = {}
    for factor in (1, 4):
        count = sizes.scale_questions * factor
        questions, annotations = vqa_like_split(count, num_images=max(1, count // 5), seed=7)
        texts = [q["question"] for q in questions]
        ids_seconds, targets_seconds = [], []
        with RSSSampler() as memory:
            for _ in range(3):  # the fastest of three: timings of a fraction of a second are easily disturbed
                nlp = text.blank_tokenizer("en")
                started = time.perf_counter()
                tokens = text.tokenize(nlp, texts)
                words = text.build_vocabulary(tokens)
                text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
                ids_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                answers, _ = answers_lib.answer_vocabulary(annotations, NUM_ANSWERS)
                answers_lib.answer_targets(annotations, answers_lib.build_answer_index(answers))
                targets_seconds.append(time.perf_counter() - started)
        ids_seconds, targets_seconds = min(ids_seconds), min(targets_seconds)
        steps[f"{factor}x"] = {"questions": count, "token_ids_s": round(ids_seconds, 3),
                               "targets_s": round(targets_seconds, 3),
                               "preprocess_rss_growth_bytes": memory.peak - memory.start}
    result: dict[str, Any] = {
        **steps,
        "token_ids_per_question_time_ratio_4x_1x": _per_item_ratio(steps, "token_ids_s", "questions"),
        "targets_per_question_time_ratio_4x_1x": _per_item_ratio(steps, "targets_s", "questions"),
    }
    if training and "scale_1x" in training:
        one = training["scale_1x"]
        for name, point in (("1x", one), ("4x", {"samples": training["questions"],
                                                 "pipeline_samples_per_s": training["pipeline_samples_per_s"],
                                                 "peak_rss_bytes": training["peak_rss_bytes"],
                                                 "rss_before_data_bytes": training["rss_before_data_bytes"]})):
            steps[name].update(train_questions=point["samples"],
                               epoch_s=round(point["samples"] / point["pipeline_samples_per_s"], 2),
                               training_rss_growth_bytes=point["peak_rss_bytes"] - point["rss_before_data_bytes"])
        result["epoch_per_question_time_ratio_4x_1x"] = _per_item_ratio(steps, "epoch_s", "train_questions")
        result["training_rss_growth_ratio_4x_1x"] = round(
            steps["4x"]["training_rss_growth_bytes"] / max(1, steps["1x"]["training_rss_growth_bytes"]), 2)
    result["note"] = ("linear cost gives per-question time ratios near 1; training memory grows with the image "
                      "features (4x the images at 4x the questions here), not with a copy per question")
    return result


def summary_rows(result: dict) -> list[dict]:
    return [summary_row("scale", f"{label} s/question 4x / 1x", None, None,
                        result.get(f"{key}_per_question_time_ratio_4x_1x"), LINEAR_TOLERANCE, higher_is_better=False)
            for key, label in (("token_ids", "token ids"), ("targets", "answer targets"), ("epoch", "train epoch"))]


def _per_item_ratio(steps: dict, seconds_key: str, count_key: str) -> float:
    one, four = steps["1x"], steps["4x"]
    return round((four[seconds_key] / four[count_key]) / (one[seconds_key] / one[count_key]), 3)
