"""The loaded run behind ``vqa serve``, and the micro-batcher that feeds it.

An ``Engine`` holds one ``vqa.predict.Predictor`` (model, vocabularies, tokenizer and image
backbone, loaded once) and one inference thread. Request handlers ``submit`` a job (an
image, one or more questions) and await its future, so the event loop never runs the model.
The inference thread takes the first waiting job, then every job that arrives within
``window_s`` (a few milliseconds) up to ``max_questions`` questions, and answers them all
together: the images not in the ``FeatureCache`` go through the backbone in one pass (in
chunks of ``vqa.predict.IMAGE_BATCH``), the questions are tokenized at once, and one model
pass scores them all (plus one pass of the attention sub-model for an attention run). A run on
detector regions has no backbone: each job brings its photo's regions (``vqa.photo_regions``,
from the request's region file), which go to the model as ``vqa predict --regions`` sends them.

Every model call has one of a few batch sizes (``batch_sizes``: powers of two, up to the largest
batch), the rows past the batch's own being zeros, and each size is traced once at start-up:
a batch of any other size would make TensorFlow trace the model again while a request waits.

The answers are ``vqa predict``'s: the same decode (``vqa.images.load_image``), backbone
outputs (``Predictor.image_rows``), tokenizer
(``Predictor.encode``), model call (``Predictor.scores``), top-k order and ``Answer`` objects.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vqa import visual
from vqa.photo_regions import PhotoRegions, model_inputs
from vqa.serve.cache import CachedImage, FeatureCache
from vqa.serve.uploads import ClientError, PreparedImage, decode

WINDOW_S = 0.004  # how long the first job of a batch waits for others
MAX_QUESTIONS = 64  # questions per batch: one model call (vqa.predict.QUESTION_BATCH)
MAX_WAITING = 512  # jobs queued before new ones are refused with 503
SHUTTING_DOWN = "The server is shutting down; start `vqa serve` again and resend the request."
BUSY = "The server is busy with other requests; wait a moment and send it again."

log = logging.getLogger("vqa.serve")


def batch_sizes(largest: int) -> tuple[int, ...]:
    """The batch sizes a model is called with: the powers of two below ``largest``, and ``largest``."""
    sizes = [1]
    while sizes[-1] * 2 < largest:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes + [largest] if largest > 1 else sizes)


def padded_size(count: int, sizes: tuple[int, ...]) -> int:
    """The smallest of ``sizes`` that holds ``count`` rows (``count`` itself past the largest)."""
    return next((size for size in sizes if size >= count), count)


def padded(rows, size: int):
    """An array, or each array of a dict of model inputs, with zero rows appended up to ``size`` rows."""
    if isinstance(rows, dict):
        return visual.pad_inputs(rows, size)
    return visual.pad_inputs({"rows": rows}, size)["rows"]


@dataclass
class Job:
    """One request's work: its questions about one image (None for a question-only run)."""

    questions: list[str]
    top_k: int
    image: PreparedImage | None
    with_attention: bool
    regions: PhotoRegions | None = None  # a run on detector regions: the photo's, from the request's file
    future: Future = field(default_factory=Future)
    cached: bool = False  # set by the engine: the image's features came from the cache


class Engine:
    """A run loaded once, answering batched jobs on its own thread.

    Args:
        run_dir: the run folder (``vqa train --out``).
        cache: the image feature cache (a new one of the default size when None).
        window_s: how long the first job of a batch waits for more.
        max_questions: questions answered by one model call.

    Raises:
        VQAError: the folder is not a usable run, or its backbone cannot describe a new image.
    """

    def __init__(self, run_dir: str | Path, cache: FeatureCache | None = None, window_s: float = WINDOW_S,
                 max_questions: int = MAX_QUESTIONS):
        from vqa.predict import IMAGE_BATCH, QUESTION_BATCH, Predictor

        self.predictor = Predictor(run_dir)
        self.question_sizes = batch_sizes(min(max_questions, QUESTION_BATCH))
        self.image_sizes = batch_sizes(IMAGE_BATCH)
        self.run_dir = Path(run_dir)
        self.cache = cache if cache is not None else FeatureCache()
        self.window_s = window_s
        self.max_questions = max_questions
        self.batches = 0  # inference rounds run
        self.jobs_done = 0
        self.map_names: list[str] | None = None
        self._queue: queue.Queue = queue.Queue(MAX_WAITING)
        self._held: Job | None = None  # a job that did not fit in the last batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warm_up()

    # --- what the run reads -------------------------------------------------------------------------------

    @property
    def uses_image(self) -> bool:
        return self.predictor.uses_image

    @property
    def has_attention(self) -> bool:
        return self.predictor.has_attention

    @property
    def reads_regions(self) -> bool:
        """Whether the run reads detector regions, which each request brings in a region file."""
        return self.predictor.reads_regions

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) every image is decoded to for the backbone; None for a run on detector regions (no backbone)."""
        return None if self.reads_regions else tuple(self.predictor.backbone.image_size)

    def describe(self) -> dict:
        """The run as ``GET /api/health`` shows it."""
        run = self.predictor.run
        return {"run": self.run_dir.name, "model": run.model, "features": run.features,
                "answers": len(self.predictor.answers), "uses_image": self.uses_image,
                "attention": self.has_attention, "map_names": self.map_names, "regions": self.reads_regions,
                "image_size": list(self.image_size) if self.uses_image and not self.reads_regions else None}

    def _warm_up(self) -> None:
        """Build the backbone and trace the model (and attention maps) at each batch size, before the first request."""
        predictor = self.predictor
        rows = None
        if self.reads_regions:  # one box of zeros
            dim = predictor.feature_dim or 1
            rows = model_inputs([PhotoRegions(0, np.zeros((1, dim), np.float32), np.array([[0, 0, 1, 1]], np.float32),
                                              (1.0, 1.0))], predictor.source.kind)
        elif self.uses_image:
            for size in self.image_sizes:
                rows = predictor.image_rows(np.zeros((size, *self.image_size, 3), np.uint8))[:1]
        ids, _ = predictor.encode(["what is this?"])
        for size in self.question_sizes:
            batch_rows = padded(rows, size) if rows is not None else None
            predictor.scores(padded(ids, size), batch_rows)
            if self.has_attention:
                maps = predictor.attention_maps(padded(ids, size), batch_rows)
        if self.has_attention:
            from vqa.heatmap import map_names

            self.map_names = map_names(predictor.run.model, maps.shape[1])

    # --- the inference thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread (again, after ``close``)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vqa-serve-inference", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Answer the jobs already queued, then stop the inference thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, questions: Sequence[str], top_k: int, image: PreparedImage | None,
               with_attention: bool = False, regions: PhotoRegions | None = None) -> Job:
        """Queue one request; its ``future`` gives the ``Answer`` of each question, in order.

        Args:
            questions, top_k: what to answer, and how many answers each.
            image: the photo (None for a question-only run).
            with_attention: give an attention run's maps.
            regions: the photo's detector regions, for a run on them.

        Raises:
            ClientError: 503 when the engine is not running or too many jobs are waiting.
        """
        job = Job(list(questions), top_k, image, with_attention, regions)
        if len(job.questions) > self.max_questions:
            raise ClientError(422, f"{len(job.questions)} questions in one request are too many; "
                                   f"send at most {self.max_questions} per request.")
        if self._thread is None:
            raise ClientError(503, SHUTTING_DOWN)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ClientError(503, BUSY) from None
        return job

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._next(block=True)
            if first is None:
                break
            jobs, count = [first], len(first.questions)
            deadline = time.monotonic() + self.window_s
            while count < self.max_questions:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if count + len(job.questions) > self.max_questions:
                    self._held = job
                    break
                jobs.append(job)
                count += len(job.questions)
            self._answer(jobs)
        while self._held is not None or not self._queue.empty():  # whatever arrived while stopping
            job = self._next(block=False)
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ClientError(503, SHUTTING_DOWN))

    def _next(self, block: bool) -> Job | None:
        """The job held back from the last batch, else the next queued one (None: the stop signal)."""
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get() if block else self._queue.get_nowait()

    def _answer(self, jobs: list[Job]) -> None:
        """One batch: features for every image, one model pass for every question, results on each future.

        A job whose request was cancelled (the server stopping at once) is dropped before any work is done.
        """
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            results = self.answer_batch(jobs)
        except Exception as error:  # a failure belongs to this batch's requests, not to the server
            if not isinstance(error, ClientError):
                log.exception("inference failed for a batch of %d requests", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, answers in zip(jobs, results):
            job.future.set_result(answers)

    def answer_batch(self, jobs: list[Job]) -> list[list]:
        """The answers of each job (a list of ``vqa.predict.Answer``), all jobs in one pass of each model."""
        from vqa.predict import IMAGE_BATCH, Answer

        predictor = self.predictor
        rows: dict[str, np.ndarray] = {}
        if self.uses_image and not self.reads_regions:
            new: dict[str, PreparedImage] = {}
            for job in jobs:
                key = job.image.key
                if key in rows or key in new:
                    job.cached = key in rows
                    continue
                entry = self.cache.get(key)
                job.cached = entry is not None
                if entry is not None:
                    rows[key] = entry.rows
                else:
                    new[key] = job.image
            images = list(new.values())
            for start in range(0, len(images), IMAGE_BATCH):
                chunk = images[start:start + IMAGE_BATCH]
                pixels = np.stack([image.pixels if image.pixels is not None else decode(image.data, self.image_size)
                                   for image in chunk])
                pixels = padded(pixels, padded_size(len(chunk), self.image_sizes))
                for image, row in zip(chunk, predictor.image_rows(pixels)):  # the padding's rows are dropped
                    rows[image.key] = row
                    self.cache.put(image.key, CachedImage(row, image.width, image.height))
        questions = [question for job in jobs for question in job.questions]
        ids, notes = predictor.encode(questions)
        features = None
        if self.reads_regions:
            features = model_inputs([job.regions for job in jobs for _ in job.questions], predictor.source.kind)
        elif self.uses_image:
            features = np.stack([rows[job.image.key] for job in jobs for _ in job.questions])
        size = padded_size(len(questions), self.question_sizes)
        ids = padded(ids, size)
        features = padded(features, size) if features is not None else None
        scores = predictor.scores(ids, features)  # rows past len(questions) are padding, never read
        maps = None
        if self.has_attention and any(job.with_attention for job in jobs):
            maps = predictor.attention_maps(ids, features)
        results, row = [], 0
        for job in jobs:
            top_k = min(job.top_k, len(predictor.answers))
            answers = []
            for question in job.questions:
                answer = Answer(question, job.image.label if job.image is not None else None,
                                predictor.top_answers(scores[row], top_k), notes[row],
                                maps[row] if maps is not None and job.with_attention else None)
                if job.regions is not None:  # the maps over its boxes, placed in the photo
                    answer.region_id = job.regions.image_id
                    if answer.attention is not None:
                        answer.attention = answer.attention[:, :len(job.regions.boxes)]
                        answer.boxes = job.regions.boxes_in(job.image.width, job.image.height)
                answers.append(answer)
                row += 1
            results.append(answers)
        self.batches += 1
        self.jobs_done += len(jobs)
        return results

    def stats(self) -> dict:
        """Batches and jobs so far, and the cache's figures."""
        return {"batches": self.batches, "requests": self.jobs_done, "waiting": self._queue.qsize(),
                "cache": self.cache.stats()}
