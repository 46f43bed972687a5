"""Multi-process data-parallel training (vqa.distributed): two JAX CPU processes on 127.0.0.1.

Every training here is a `python -m vqa train` subprocess with KERAS_BACKEND=jax (a JAX
cluster is joined once per Python process, before JAX computes anything). The processes of
a cluster talk through JAX's distributed runtime, with gloo CPU collectives.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from vqa import checkpoints, distributed
from vqa.errors import VQAError

from helpers import write_tiny_out

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": {"name": "bow-mlp", "hidden_units": 12, "dropout": 0.3},
        "train": {"batch_size": 16, "learning_rate": 0.01, "early_stopping_patience": 0, "seed": 7}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, run: Path, config: Path, epochs: int, process: tuple[int, int] | None = None,
           port: int = 0, extra: tuple[str, ...] | list[str] = ()) -> subprocess.Popen:
    """`vqa train` in a subprocess on JAX; ``process`` = (id, count) joins a cluster on ``port``.

    The subprocesses share JAX's compilation cache (beside the config), so later ones skip compiling.
    """
    command = [sys.executable, "-m", "vqa", "train", "--data", str(out), "--out", str(run), "--config", str(config),
               "--epochs", str(epochs), *extra]
    if process is not None:
        command += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(process[1]),
                    "--process-id", str(process[0])]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
           "VQA_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_COMPILATION_CACHE_DIR": str(config.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(*runs: subprocess.Popen, timeout: int = 150) -> list[tuple[dict, str]]:
    """(printed metrics, stderr) of each subprocess, once all have ended successfully."""
    results = []
    try:
        for run in runs:
            stdout, stderr = run.communicate(timeout=timeout)
            assert run.returncode == 0, stderr[-3000:]
            results.append((json.loads(stdout), stderr))
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate()
    return results


def _weights(run: Path) -> list[np.ndarray]:
    return checkpoints.load_checkpoint_model(run).get_weights()


def _assert_close(mine: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_train_and_resume_like_one(tmp_path):
    """Two processes train epoch 1 ("killed" there), then resume to epoch 2: the weights are those of
    one process training both epochs uninterrupted, dropout and the (seed, epoch) shuffle included."""
    pytest.importorskip("jax", reason="jax is not installed: pip install 'jax[cpu]' (the test extra) to train on JAX")
    out = write_tiny_out(tmp_path / "out")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    single, pair = tmp_path / "single", tmp_path / "pair"

    port = _free_port()
    first = [_train(out, pair, config, 1, (i, 2), port) for i in range(2)]
    (first_metrics, first_log), (other_metrics, other_log), (single_metrics, _) = _finish(
        *first, _train(out, single, config, 2))
    assert "DataParallel over 2 device(s) of 2 processes" in first_log and "epoch 1/1" in first_log
    assert "process 1 of 2" in other_log and "epoch 1/1" not in other_log  # process 0 alone reports
    assert other_metrics == first_metrics  # every process ends with process 0's numbers

    port = _free_port()
    (metrics, log), (other_metrics, _) = _finish(*[_train(out, pair, config, 2, (i, 2), port) for i in range(2)])
    assert "resuming" in log and "after epoch 1" in log and other_metrics == metrics
    _assert_close(_weights(pair), _weights(single))
    for key in ("val_vqa_accuracy", "train_accuracy", "best_epoch", "epochs_done", "num_train_questions"):
        assert metrics[key] == pytest.approx(single_metrics[key], abs=0.01), key
    sessions = json.loads((pair / "environment.json").read_text())["sessions"]
    assert [(s["started_after_epoch"], s["num_processes"], len(s["devices"])) for s in sessions] == [
        (0, 2, 2), (1, 2, 2)]


def test_each_process_feeds_its_share_of_every_global_batch(tmp_path):
    """Process 0 the first half of each (padded) global batch, process 1 the second; padding weighs 0."""
    from vqa import dataset

    data = dataset.load_split(write_tiny_out(tmp_path / "out"), "train2014")
    kwargs = {"batch_size": 16, "num_answers": 5, "training": True, "seed": 3}
    whole = dataset.QuestionBatches(data, batch_multiple=4, **kwargs)
    shares = [dataset.QuestionBatches(data, batch_multiple=4, shard=(i, 2), **kwargs) for i in range(2)]
    assert len(whole) == len(shares[0]) == 4 and shares[0].num_samples == whole.num_samples == 60
    for epoch in (0, 1):
        for batches in (whole, *shares):
            batches.set_epoch(epoch)
        for index in range(len(whole)):
            (inputs, targets, weights), parts = whole[index], [share[index] for share in shares]
            for key in inputs:
                np.testing.assert_array_equal(np.concatenate([part[0][key] for part in parts]), inputs[key])
            np.testing.assert_array_equal(np.concatenate([part[1] for part in parts]), targets)
            np.testing.assert_array_equal(np.concatenate([part[2] for part in parts]), weights)
    # The last batch holds 60 - 48 = 12 questions, padded to 12: no padding; with a multiple of 8, 16 rows.
    padded = [dataset.QuestionBatches(data, batch_multiple=8, shard=(i, 2), **kwargs)[3] for i in range(2)]
    assert [part[2].tolist() for part in padded] == [[1.0] * 8, [1.0] * 4 + [0.0] * 4]
    with pytest.raises(VQAError, match="2 training processes need a batch multiple divisible by 2, got 3"):
        dataset.QuestionBatches(data, batch_multiple=3, shard=(0, 2), **kwargs)


def test_cluster_settings_from_options_and_keras_variables():
    environ = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert distributed.cluster_from(environ=environ) == distributed.Cluster("10.0.0.1:1234", 2, 1)
    assert distributed.cluster_from("host-a:99", 4, 3, environ=environ) == distributed.Cluster("host-a:99", 4, 3)
    assert distributed.cluster_from(environ={}) == distributed.SINGLE
    assert not distributed.cluster_from(environ={}).multi_process and distributed.SINGLE.writes
    with pytest.raises(VQAError, match=r"--process-id must be from 0 to 1 \(--num-processes 2\), not 2"):
        distributed.cluster_from("h:1", 2, 2, environ={})
    with pytest.raises(VQAError, match="--coordinator must be process 0's HOST:PORT"):
        distributed.cluster_from(None, 2, 0, environ={})
    with pytest.raises(VQAError, match="--num-processes must be at least 1"):
        distributed.cluster_from("h:1", 0, 0, environ={})
    with pytest.raises(VQAError, match="KERAS_DISTRIBUTION_NUM_PROCESSES must be a whole number"):
        distributed.cluster_from(environ={"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"})


@pytest.mark.parametrize("address, problem", [
    ("127.0.0.1:99999", "has port 99999, outside 1-65535"), ("127.0.0.1:0", "has port 0, outside 1-65535"),
    ("300.1.2.3:1234", "has 300.1.2.3, which is not an IPv4 address"),
    ("host..a:1234", "has host..a, which is not a host name"), ("-host:1234", "has -host, which is not a host name"),
    ("[12345::1]:1234", "has [12345::1], which is not an IPv6 address"), ("host a:1234", "is not HOST:PORT")])
def test_a_malformed_coordinator_is_refused_before_any_network_call(address, problem):
    with pytest.raises(VQAError, match=re.escape(f"{address!r} {problem}.")):
        distributed.cluster_from(address, 2, 1, environ={})


def test_well_formed_coordinators_and_timeouts_are_accepted():
    for address in ("10.0.0.1:1234", "[::1]:65535", "host-0.example.org:1", "node_3:8476"):
        assert distributed.cluster_from(address, 2, 1, environ={}).coordinator == address
    assert distributed.cluster_from("h:1", 2, 1, environ={}).connect_timeout == distributed.DEFAULT_CONNECT_TIMEOUT
    with pytest.raises(VQAError, match="--connect-timeout must be from 1 to 86400 seconds, not 0"):
        distributed.cluster_from("h:1", 2, 1, environ={}, connect_timeout=0)


def test_a_process_whose_coordinator_never_answers_gives_up_in_one_sentence(tmp_path):
    out = write_tiny_out(tmp_path / "out")
    port = _free_port()  # closed: nobody listens there
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    started = time.monotonic()
    run = _train(out, tmp_path / "run", config, epochs=1, process=(1, 2), port=port, extra=["--connect-timeout", "2"])
    _, stderr = run.communicate(timeout=120)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert run.returncode == 1, stderr
    assert lines[-1] == (f"error: process 1 of 2 could not join the cluster at 127.0.0.1:{port} within "
                         "--connect-timeout 2 s; start every process with the same --coordinator (process 0 "
                         "listens there), or check the address and the firewall."), stderr
    assert "Traceback" not in stderr and "Check failure" not in stderr
    assert time.monotonic() - started < 90
    distributed.check_devices("2", 1)
    distributed.check_devices("all", 2)
    with pytest.raises(VQAError, match="train.devices=2 cannot be combined with --num-processes"):
        distributed.check_devices("2", 2)


def test_tensorflow_backend_refuses_several_processes(tmp_path, capsys):
    """On TensorFlow, a cluster (options or TF_CONFIG with two workers) is refused in one sentence."""
    from vqa.cli import main

    out = write_tiny_out(tmp_path / "out")
    code = [sys.executable, "-m", "vqa", "train", "--data", str(out), "--out", str(tmp_path / "run"),
            "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1"]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO)}
    result = subprocess.run(code, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: multi-process training runs on the JAX "
                                                             "backend only")
    assert "KERAS_BACKEND=jax" in result.stderr and not (tmp_path / "run").exists()

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TF_CONFIG check needs the TensorFlow backend")
    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    os.environ["TF_CONFIG"] = json.dumps(workers)
    try:
        assert main(["train", "--data", str(out), "--out", str(tmp_path / "tf"), "--epochs", "1"]) == 1
    finally:
        del os.environ["TF_CONFIG"]
    # Before it, train has only said what the model reads ("deeper-lstm-norm-i reads image features (fc7) ...").
    *said, error = capsys.readouterr().err.strip().splitlines()
    assert not [line for line in said if "error" in line], said
    assert error.startswith("error: TF_CONFIG names 2 workers, but multi-process training runs on the JAX backend")
    assert error.count(". ") == 0 and error.endswith(".")
