"""The seed-variance report: ``vqa train ... --seeds N`` trains one run per seed and summarises them.

With ``--seed S`` (default 0) it trains seeds S, S+1, ..., S+N-1 into ``RUN/seed-S``,
``RUN/seed-S+1``, ... (each an ordinary run folder, resumable like any other), then writes
``RUN/seeds.json`` and prints, for the overall validation accuracy and each answer type, the mean
± the sample standard deviation over the seeds: an improvement smaller than a few of those
standard deviations may be noise.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from vqa import distributed
from vqa.config import Config
from vqa.distributed import Cluster
from vqa.errors import VQAError
from vqa.storage import read_json, write_json

SEEDS_FILE = "seeds.json"
FORMAT_VERSION = 1
SCORE_PREFIX = "val_vqa_accuracy"


def seed_run_dir(run_dir: str | Path, seed: int) -> Path:
    """The run folder of one seed."""
    return Path(run_dir) / f"seed-{seed}"


def seeds_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SEEDS_FILE


def summarise(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Mean, sample standard deviation (n - 1), min, max and values of every validation score.

    Args:
        per_seed: seed -> that run's final metrics.

    Returns:
        score name (``val_vqa_accuracy``, ``val_vqa_accuracy_yes_no``, ...) -> {"mean", "std",
        "min", "max", "values"}, rounded to 2 decimals (the scores' own precision is 0.01); a
        score only some runs have (an answer type missing from one validation) is left out.
    """
    runs = list(per_seed.values())
    names = [key for key in runs[0] if key.startswith(SCORE_PREFIX)] if runs else []
    summary = {}
    for name in names:
        values = [run[name] for run in runs if isinstance(run.get(name), (int, float))]
        if len(values) != len(runs):
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        summary[name] = {"mean": round(mean, 2), "std": round(std, 2), "min": min(values), "max": max(values),
                         "values": values}
    return summary


def report_lines(summary: dict[str, dict], num_seeds: int) -> list[str]:
    """One line per score: "val_vqa_accuracy            61.23 ± 0.45  (min 60.80, max 61.70)"."""
    width = max((len(name) for name in summary), default=0)
    return [f"{name:<{width}}  {item['mean']:6.2f} ± {item['std']:.2f}  (min {item['min']:.2f}, max "
            f"{item['max']:.2f}, {num_seeds} seeds)" for name, item in summary.items()]


def train_seeds(data_dir: str | Path, run_dir: str | Path, config: Config, num_seeds: int, resume: bool = True,
                log: Callable[[str], None] = print, cluster: Cluster = distributed.SINGLE) -> dict:
    """Train ``num_seeds`` runs differing only in ``train.seed`` and report their spread.

    Args:
        data_dir: the preprocessed directory OUT.
        run_dir: RUN, holding one run folder per seed and ``seeds.json``.
        config: the configuration; its ``train.seed`` is the first seed.
        num_seeds: how many seeds, at least 2.
        resume, log, cluster: as ``vqa.train.train``, for every seed.

    Returns:
        What ``seeds.json`` holds: {"format_version", "seeds", "runs" (folders), "scores"
        (``summarise``)}.

    Raises:
        VQAError: fewer than 2 seeds, seeds past the largest seed, or what ``train`` raises.
    """
    if num_seeds < 2:
        raise VQAError(f"--seeds must be at least 2 to measure a spread, not {num_seeds}; train once without it.")
    first = config.train.seed
    seeds = list(range(first, first + num_seeds))
    if seeds[-1] >= 2**32:
        raise VQAError(f"--seed {first} with --seeds {num_seeds} goes past the largest seed, 4294967295.")
    from vqa.train import train  # loads the backend, after the settings are checked

    per_seed = {}
    for seed in seeds:
        log(f"seed {seed} ({seeds.index(seed) + 1} of {num_seeds}) into {seed_run_dir(run_dir, seed)}")
        seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        per_seed[seed] = train(data_dir, seed_run_dir(run_dir, seed), seeded, resume=resume, log=log,
                               cluster=cluster)
    summary = summarise(per_seed)
    report = {"format_version": FORMAT_VERSION, "seeds": seeds,
              "runs": [str(seed_run_dir(run_dir, seed)) for seed in seeds], "scores": summary}
    if cluster.writes:
        write_json(seeds_path(run_dir), report)
        log(f"validation VQA accuracy of seeds {seeds[0]}-{seeds[-1]}: mean ± sample standard deviation "
            f"(also in {seeds_path(run_dir)})")
        for line in report_lines(summary, num_seeds):
            log(line)
    return report


def read_seeds_report(run_dir: str | Path) -> dict:
    """The report ``train_seeds`` wrote into RUN.

    Raises:
        VQAError: RUN has no report, or it is not one of this format.
    """
    path = seeds_path(run_dir)
    data = read_json(path, "seed-variance report")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or "scores" not in data:
        raise VQAError(f"{path} is not a seed-variance report of format {FORMAT_VERSION}; train the seeds again.")
    return data
