"""``vqa bench``: every stage of the project measured beside a reference way of doing the same work.

Each figure is a RATIO of two measurements taken in one run on the same machine, so
the numbers mean something on any computer; absolute rates are kept beside them.

Sections (keys of the results file), one module each: ``machine`` (CPU, cores,
backend, versions), ``questions`` (tokenizer-only token ids against a full spaCy
pipeline per question), ``question_storage`` (stored token ids against per-token word
vectors), ``features`` (JPEG files to features on disk against the backbone on batches
in memory), ``training`` (QuestionBatches into ``model.fit`` against arrays in memory),
``predict`` (warm latency, the CLI's cold start, batches), ``scale`` (preprocessing
and a training epoch at 1x and 4x the questions), ``grid`` (an attention model on
grids streamed from the grid file against memory, its RSS at 4x the images against 1x,
extraction with a grid output against the forward pass), ``regions`` (the same on 10-100 adaptive
boxes streamed from the region file), ``region_models`` (mcan against updown on the same region batches: training
samples/s, and one question on a saved run of each), ``serve`` (a ``vqa serve`` child process on 127.0.0.1: 8
clients against 1, the feature cache, latency, RSS) and ``learning`` (every registered model with
its own recipe against a plain-Keras reference recipe, val accuracy on three small datasets at 1x
and 4x; its finished runs are kept beside the results file, so a killed run resumes: see
``vqa.bench.learning_rows``). Each module has ``run(sizes, work, log) -> dict`` and
``summary_rows(result) -> list[dict]``.

Everything is generated in a temporary folder (``vqa.bench.synthetic``: VQA-like
questions, photo-like JPEGs, a synthetic preprocessed OUT in the layout vqa.split_files
documents), so the benchmark runs offline. Training and scale measurements run in child
processes (``vqa.bench.child``), so each peak-memory figure belongs to that measurement
alone. ``quick=True`` runs a tiny version of every section (a smoke test, with a small
stand-in CNN instead of VGG-16) in well under a minute.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from vqa.bench import (features, grid, learning, machine, predict, question_storage, questions, region_models, regions,
                       scale, serve, training)
from vqa.bench.report import failed_row, format_table, jsonable
from vqa.bench.settings import FORMAT_VERSION, FULL, QUICK, TARGETS, Sizes
from vqa.errors import VQAError
from vqa.locks import folder_lock
from vqa.storage import write_json

__all__ = ["run_bench", "Sizes", "TARGETS", "FULL", "QUICK", "SECTIONS", "summary_rows", "format_table"]

SECTIONS = {"machine": machine, "questions": questions, "question_storage": question_storage,
            "features": features, "training": training, "predict": predict, "scale": scale, "grid": grid,
            "regions": regions, "region_models": region_models, "serve": serve, "learning": learning}


def run_bench(out: str | os.PathLike, quick: bool = False, sections: Sequence[str] = (),
              log: Callable[[str], None] = print) -> int:
    """Run the sections, write ``out`` (JSON, atomically) and print the results table.

    Args:
        out: the results file (JSON; ``vqa bench --out``).
        quick: run the tiny smoke-test version of every section.
        sections: the sections to run (``vqa bench --sections``), in table order whatever the order
            given; () runs them all. ``machine`` always runs.
        log: where progress lines go.

    Returns:
        0 when every section ran (missed targets included), 1 when one failed; a
        failed section holds ``error`` in the JSON and the others still run.
    """
    chosen = chosen_sections(sections)
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {"format_version": FORMAT_VERSION, "quick": quick, "sections": list(chosen),
                               "sizes": jsonable(dataclasses.asdict(sizes))}
    failed = []
    with tempfile.TemporaryDirectory(prefix="vqa-bench-") as work:
        for name in chosen:
            section = SECTIONS[name]
            log(f"bench: {name} ...")
            section_started = time.perf_counter()
            try:
                if section is scale:  # scale's training points come from the training section's child
                    results[name] = scale.run(sizes, Path(work), log, training=results.get("training"))
                elif section is learning and not quick:  # hours of training: finished runs survive a kill
                    with folder_lock(learning_folder(out), "bench"):
                        results[name] = learning.run(sizes, Path(work), log, keep=learning_folder(out))
                else:
                    results[name] = section.run(sizes, Path(work), log)
            except Exception as error:  # one broken stage must not hide the others' numbers
                failed.append(name)
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                log(f"bench: {name} failed: {traceback.format_exc(limit=-3)}")
            results[name]["seconds"] = round(time.perf_counter() - section_started, 1)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = machine.load_average()
    results["summary"] = summary_rows(results)
    write_json(out, results)
    print(format_table(results["summary"]))
    print(f"({'quick smoke run, ' if quick else ''}{results['total_seconds']:.0f} s; all figures in {out})")
    sys.stdout.flush()
    return 1 if failed else 0


def learning_folder(out: str | os.PathLike) -> Path:
    """Where the learning section keeps its finished runs: ``bench/results-learning/`` for ``bench/results.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-learning")


def chosen_sections(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` (all when empty) in table order, ``machine`` first; one sentence for an unknown name."""
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise VQAError(f"unknown bench section {unknown[0]!r} (--sections); choose from {', '.join(SECTIONS)}.")
    return tuple(name for name in SECTIONS if not names or name in names or name == "machine")


def summary_rows(results: dict) -> list[dict]:
    """The rows of the summary table of the sections run, in section order; one FAILED row for a failed section."""
    rows = []
    for name, section in SECTIONS.items():
        if section is machine or name not in results:  # machine describes the machine, compares nothing
            continue
        entry = results.get(name, {})
        if "error" in entry:
            rows.append(failed_row(name, entry["error"], TARGETS.get(name)))
        else:
            rows.extend(section.summary_rows(entry))
    return rows
