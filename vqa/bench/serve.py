"""Section ``serve``: ``vqa serve`` under load, measured against a server the bench starts on 127.0.0.1.

A run is trained for one epoch on a synthetic OUT (``vqa.bench.synthetic``) and served by
``vqa serve --port 0`` in a child process (so its memory is its own). Clients in this
process send pre-encoded multipart requests over keep-alive connections
(``http.client``), each a distinct question, and check every answer names its own
question. Measured, with bounded request counts:

- requests/s with 8 concurrent clients against 1, about one image (cached after the first
  request): the gain of micro-batching, since 8 waiting questions share one model pass;
- ms per request about a new image against a repeated one, one client: the feature cache;
- p50 and p95 latency, with 1 client and with 8;
- the server's RSS before and after ``memory_requests`` requests over a pool of images.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from vqa.bench.child import CHILD_TIMEOUT_S, child_env
from vqa.bench.report import summary_row
from vqa.bench.settings import TARGETS
from vqa.bench.synthetic import bench_backbone_spec, vqa_like_questions, write_photo_like_jpegs, write_synthetic_out

BOUNDARY = "vqa-bench-boundary-7d1f0c"
SERVER_START_S = 300  # the child imports TensorFlow and builds the backbone


def run(sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Train a small run, serve it in a child process, and time it under 1 and 8 clients."""
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.train import train

    out_dir = write_synthetic_out(work / "serve_out", 256, 32, backbone=bench_backbone_spec(sizes, work))
    run_dir = work / "serve_run"
    config = Config(data=DataConfig(data_dir=str(out_dir), val_split=""), model=ModelConfig(**dict(sizes.model)),
                    train=TrainConfig(epochs=1, batch_size=64))
    train(out_dir, run_dir, config, log=lambda message: None)
    new_images = sizes.serve_warmup_requests // 4 + sizes.serve_cache_requests + 2
    photos = [path.read_bytes() for path in
              write_photo_like_jpegs(work / "serve_jpegs", new_images + sizes.serve_memory_images, seed=7)]
    pool, fresh = photos[:sizes.serve_memory_images], iter(photos[sizes.serve_memory_images:])
    questions = iter(vqa_like_questions(20_000, seed=8))

    with ServerProcess(run_dir) as server:
        log(f"bench: serve: server at {server.url} (pid {server.pid})")
        same = next(fresh)
        # Warm-up: every batch size up to the clients' count is traced before anything is timed.
        server.load([(next(fresh) if i % 4 == 0 else same, next(questions)) for i in range(sizes.serve_warmup_requests)],
                    sizes.serve_clients)
        server.load([(same, next(questions)) for _ in range(sizes.serve_warmup_requests // 2)], 1)
        single = server.load([(same, next(questions)) for _ in range(sizes.serve_single_requests)], 1)
        concurrent = server.load([(same, next(questions)) for _ in range(sizes.serve_concurrent_requests)], sizes.serve_clients)
        repeated = server.load([(same, next(questions)) for _ in range(sizes.serve_cache_requests)], 1)
        new = server.load([(next(fresh), next(questions)) for _ in range(sizes.serve_cache_requests)], 1)
        server.load([(image, next(questions)) for image in pool], 1)  # the pool's features are cached from here
        rss_before = server.rss_bytes()
        memory = server.load([(pool[i % len(pool)], next(questions)) for i in range(sizes.serve_memory_requests)],
                             sizes.serve_clients)
        rss_after = server.rss_bytes()
        health = server.health()
    sent = server.sent
    single_rps, concurrent_rps = single["requests_per_s"], concurrent["requests_per_s"]
    new_ms, repeated_ms = new["latency_ms"]["p50"], repeated["latency_ms"]["p50"]
    return {
        "requests_per_s_1_client": single_rps,
        f"requests_per_s_{sizes.serve_clients}_clients": concurrent_rps,
        "requests_per_s_ratio": round(concurrent_rps / single_rps, 3),
        "target": TARGETS["serve"],
        "latency_ms_1_client": single["latency_ms"],
        f"latency_ms_{sizes.serve_clients}_clients": concurrent["latency_ms"],
        "new_image_ms": new_ms,
        "repeated_image_ms": repeated_ms,
        "cache_ratio": round(new_ms / repeated_ms, 3),
        "cache_target": TARGETS["serve_cache"],
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_ratio": round(rss_after / rss_before, 4),
        "rss_target": TARGETS["serve_memory"],
        "memory_requests": memory["requests"],
        "requests_sent": sent,
        "requests_answered_by_server": health["requests"],
        "model_batches": health["batches"],
        "questions_per_model_batch": round(health["requests"] / max(1, health["batches"]), 2),
        "cache": health["cache"],
        "failed_requests": server.failures,
        "shutdown_exit_status": server.exit_status,
        "sizes": {name.removeprefix("serve_"): value for name, value in dataclasses.asdict(sizes).items()
                  if name.startswith("serve_")},
        "model": dict(sizes.model),
        "backbone": health.get("image_size"),
        "note": ("one server process (`vqa serve --port 0`); clients are threads of the bench process on keep-alive "
                 "connections sending pre-encoded requests, every one a distinct question; throughput and the "
                 "latency percentiles are about one 640 x 480 JPEG whose features are cached after its first "
                 "request; the cache figure is the median latency of one client about new images against a "
                 "repeated one; RSS is the server's, read from /proc after a warm-up and after the memory phase"),
    }


def summary_rows(result: dict) -> list[dict]:
    clients = result["sizes"]["clients"]
    latency = result[f"latency_ms_{clients}_clients"]
    return [
        summary_row("serve", f"requests/s ({clients} clients vs 1)", result[f"requests_per_s_{clients}_clients"],
                    result["requests_per_s_1_client"], result["requests_per_s_ratio"], result["target"]),
        summary_row("serve", "ms/request (new image vs repeated)", result["new_image_ms"],
                    result["repeated_image_ms"], result["cache_ratio"], result["cache_target"]),
        summary_row("serve", f"latency ms p50 / p95 ({clients} clients)", latency["p50"], latency["p95"], None),
        summary_row("serve", f"RSS MB after vs before {result['memory_requests']} req",
                    round(result["rss_after_bytes"] / 1e6, 1), round(result["rss_before_bytes"] / 1e6, 1),
                    result["rss_ratio"], result["rss_target"], higher_is_better=False),
    ]


def multipart_body(image: bytes, question: str) -> bytes:
    """A ``POST /api/answer`` body: the image as a file, one question, top_k 5."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="question"\r\n\r\n{question}\r\n'.encode(),
             f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n5\r\n'.encode(),
             (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
              "Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n",
             f"--{BOUNDARY}--\r\n".encode()]
    return b"".join(parts)


def percentiles(seconds: list[float]) -> dict:
    """p50 and p95 of request times, in ms."""
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": None, "p95": None}
    at = lambda share: ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]  # noqa: E731
    return {"p50": round(1000 * statistics.median(ordered), 2), "p95": round(1000 * at(0.95), 2)}


class ServerProcess:
    """``vqa serve --run RUN --port 0`` in a child process, with clients to load it: ``with ServerProcess(run): ...``."""

    def __init__(self, run_dir: Path):
        self.command = [sys.executable, "-m", "vqa", "serve", "--run", str(run_dir), "--port", "0"]
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.host, self.port = "127.0.0.1", 0
        self.sent = 0
        self.failures: list[str] = []
        self.exit_status: int | None = None
        self._lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> "ServerProcess":
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=child_env())
        found = threading.Event()

        def read_stderr():
            for line in self.process.stderr:
                self._lines.append(line.rstrip())
                match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    self.url = f"http://127.0.0.1:{self.port}/"
                    found.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not found.wait(SERVER_START_S) or self.process.poll() is not None:
            self._stop()
            raise RuntimeError(f"`vqa serve` did not start: {' | '.join(self._lines[-5:])}")
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.exit_status = None if self.process is None else self.process.returncode
            return
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            self.exit_status = self.process.wait(CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_status = self.process.wait()

    def rss_bytes(self) -> int:
        """The server process's resident memory now."""
        import os

        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def health(self) -> dict:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request("GET", "/api/health")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def load(self, requests: list[tuple[bytes, str]], clients: int) -> dict:
        """Send ``requests`` ((image, question) pairs) from ``clients`` threads, each waiting for its answers.

        Returns:
            ``requests``, ``seconds``, ``requests_per_s`` and ``latency_ms`` (p50, p95).
        """
        bodies = [(multipart_body(image, question), question) for image, question in requests]
        shares = [bodies[number::clients] for number in range(clients)]
        times: list[list[float]] = [[] for _ in range(clients)]
        ready = threading.Barrier(clients + 1)

        def client(number: int) -> None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            ready.wait()
            for body, question in shares[number]:
                started = time.perf_counter()
                try:
                    connection.request("POST", "/api/answer", body, headers)
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    if response.status != 200 or answer["results"][0]["question"] != question.strip():
                        self.failures.append(f"{response.status}: {str(answer)[:200]}")
                except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
                times[number].append(time.perf_counter() - started)
            connection.close()

        threads = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(clients)]
        for thread in threads:
            thread.start()
        ready.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        self.sent += len(requests)
        latencies = [value for share in times for value in share]
        return {"requests": len(requests), "seconds": round(seconds, 3),
                "requests_per_s": round(len(requests) / seconds, 2), "latency_ms": percentiles(latencies)}
