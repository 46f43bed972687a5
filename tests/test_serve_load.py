"""`vqa serve` on a real socket: 16 concurrent clients and 400 requests, and the command itself with Ctrl-C.

The tiny global run is built once for the module (``serve_helpers.build_runs``). The load test
runs uvicorn in a thread on a free 127.0.0.1 port; every request is a distinct (image,
question) pair whose answer a separate ``vqa.predict.Predictor`` computed first, so a lost,
duplicated or swapped answer shows. The command test starts ``python -m vqa serve`` as a
user would, asks it what ``vqa predict --json`` is asked, and stops it with SIGINT (Ctrl-C)
while 32 more requests are in flight; SIGTERM and a double Ctrl-C are stopped the same way. Each
stop must answer every request it accepted in JSON (its answer, or a 503 for the double Ctrl-C),
print no traceback and exit with status 0.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from serve_helpers import ServerThread, answers_of, build_runs, free_socket, photo_bytes, same_answers
from vqa.cli import main

pytestmark = pytest.mark.slow  # one tiny training, 400 requests, three `vqa serve` processes: ~90 s on 2 cores

CLIENTS, REQUESTS = 16, 400
WORDS = ["what", "color", "is", "the", "car", "cat", "dog", "sky", "man", "holding", "how", "many", "there"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_factory):
    return build_runs(tmp_path_factory.mktemp("serve_load"), vectors_factory)


def _questions(count: int) -> list[str]:
    """``count`` distinct questions of three vocabulary words each."""
    triples = list(itertools.permutations(WORDS, 3))[::7][:count]
    return [" ".join(words) + " ?" for words in triples]


def test_16_clients_each_get_their_own_400_answers(built, tmp_path):
    import httpx2

    from vqa.predict import Predictor
    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery

    run_dir = built["runs"]["deeper-lstm-norm-i"]
    images = [photo_bytes(300 + number) for number in range(10)]
    files = []
    for number, data in enumerate(images):
        files.append(tmp_path / f"photo_{number}.jpg")
        files[-1].write_bytes(data)
    questions = _questions(REQUESTS // len(images))
    pairs = [(image, question) for image in range(len(images)) for question in range(len(questions))]
    assert len(pairs) == REQUESTS
    expected = Predictor(run_dir).answer([files[i] for i, _ in pairs], [questions[q] for _, q in pairs], top_k=3)
    fingerprints = {tuple(answers_of(answer.to_json())) for answer in expected}
    # Distinct answers, so a swapped one would show (332 of the 400 with the tiny one-epoch run).
    assert len(fingerprints) > 0.8 * REQUESTS

    engine = Engine(run_dir)
    results: dict[int, dict] = {}
    failures: list[str] = []
    start = threading.Barrier(CLIENTS + 1)

    def client(number: int, url: str) -> None:
        with httpx2.Client(base_url=url, timeout=120) as session:
            start.wait()
            for index in range(number, REQUESTS, CLIENTS):
                image, question = pairs[index]
                try:
                    response = session.post("/api/answer", data={"question": questions[question], "top_k": "3"},
                                            files={"image": (f"photo_{image}.jpg", images[image], "image/jpeg")})
                    if response.status_code != 200:
                        failures.append(f"{index}: {response.status_code} {response.text[:200]}")
                    results[index] = response.json()
                except httpx2.HTTPError as error:
                    failures.append(f"{index}: {type(error).__name__} {error}")

    with ServerThread(create_app(engine, run_gallery(run_dir))) as url:
        threads = [threading.Thread(target=client, args=(number, url)) for number in range(CLIENTS)]
        for thread in threads:
            thread.start()
        start.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join(300)
        seconds = time.perf_counter() - started
        health = httpx2.get(f"{url}/api/health").json()
    assert not failures, failures[:5]
    assert sorted(results) == list(range(REQUESTS))  # none lost
    for index, body in results.items():
        image, question = pairs[index]
        [result] = body["results"]
        assert result["question"] == questions[question] and result["image"] == f"photo_{image}.jpg"
        assert same_answers(answers_of(result), expected[index].answers), (index, result, expected[index])
    assert health["requests"] == REQUESTS and engine.jobs_done == REQUESTS
    assert health["cache"]["entries"] == len(images)  # each image through the backbone once
    assert engine.batches < REQUESTS * 0.75, f"{engine.batches} batches: concurrent requests were not merged"
    print(f"{REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s ({REQUESTS / seconds:.0f}/s), "
          f"{engine.batches} model batches")


def _start_server(run_dir, *args) -> tuple[subprocess.Popen, str, list[str]]:
    """``python -m vqa serve`` with ``args``; its URL once it says it is serving, and its stderr lines so far."""
    process = subprocess.Popen([sys.executable, "-m", "vqa", "serve", "--run", str(run_dir), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        match = re.search(r"http://[\d.]+:(\d+)/ ", line)
        if match:
            return process, f"http://127.0.0.1:{match.group(1)}", lines
    process.kill()
    raise AssertionError(f"`vqa serve` did not start: {lines}")


def test_the_command_answers_as_vqa_predict_does_and_stops_on_ctrl_c(built, capsys):
    import httpx2

    run_dir = built["runs"]["deeper-lstm-norm-i"]
    photo = built["photos"]["val2014"][1]
    process, url, lines = _start_server(run_dir, "--host", "0.0.0.0", "--port", "0")
    try:
        assert any(line.startswith("warning: --host 0.0.0.0 makes the server reachable from other machines")
                   for line in lines), lines
        with photo.open("rb") as image:  # what `curl -F image=@photo.jpg -F question=...` sends
            response = httpx2.post(f"{url}/api/answer", data={"question": "what color is the car ?"},
                                  files={"image": (photo.name, image, "image/jpeg")}, timeout=60)
        assert response.status_code == 200, response.text
        assert main(["predict", "--run", str(run_dir), "--image", str(photo), "--question",
                     "what color is the car ?", "--json"]) == 0
        predicted = json.loads(capsys.readouterr().out)
        [served] = response.json()["results"]
        assert served["answers"] == predicted["answers"] and served["notes"] == predicted["notes"]
        results = _stop_with_requests_in_flight(process, int(url.rsplit(":", 1)[1]), ["SIGINT"])
        _check_stopped_cleanly(process, results, drained=True)
    finally:
        if process.poll() is None:
            process.kill()


def test_a_port_in_use_is_one_sentence_before_the_run_is_loaded(built, capsys):
    taken = free_socket()
    port = taken.getsockname()[1]
    try:
        started = time.perf_counter()
        assert main(["serve", "--run", str(built["runs"]["deeper-lstm-norm-i"]), "--port", str(port)]) == 1
        assert time.perf_counter() - started < 5
    finally:
        taken.close()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"error: port {port} on 127.0.0.1 is already in use (another `vqa serve`?); pass another "
                     "--port, or stop the other server.")


def test_a_folder_that_is_not_a_run_is_one_sentence(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --run {tmp_path} is not a run folder (no run.json); "
                                               "pass a folder made by `vqa train --out`.")


# --- stopping: every request in flight gets JSON, and the log no traceback ---------------------------------------


def _multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``fields`` (name, value) and ``files`` (name, file name, bytes), and its type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{file_name}"\r\n'
              f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, file_name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _stop_with_requests_in_flight(process: subprocess.Popen, port: int, signals: list[str]) -> list:
    """32 requests at once on their own connections, then ``signals`` sent to the server once they are written.

    Returns:
        Per request (status, content type, body), or the exception its client met.
    """
    # Large photos keep the decoder busy for a while, so the signal finds requests in flight.
    bodies = [_multipart([("question", "what color is the car ?")],
                         [("image", f"p{n}.jpg", photo_bytes(n, (1200, 900)))]) for n in range(32)]
    results: list = [None] * len(bodies)
    sent = threading.Barrier(len(bodies) + 1)

    def ask(number: int) -> None:
        body, content_type = bodies[number]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("POST", "/api/answer", body, {"Content-Type": content_type})
            sent.wait(30)
            response = connection.getresponse()
            results[number] = (response.status, response.getheader("content-type", ""), response.read())
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as error:
            results[number] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(len(bodies))]
    for thread in threads:
        thread.start()
    sent.wait(60)
    time.sleep(0.2)  # the server has accepted them
    for name in signals:
        process.send_signal(getattr(signal, name))
        time.sleep(0.05)
    for thread in threads:
        thread.join(90)
    return results


def _check_stopped_cleanly(process: subprocess.Popen, results: list, drained: bool) -> None:
    """Every answer JSON (200, or 503 for shutting down; all 200 when ``drained``), no traceback, exit status 0."""
    out, err = process.communicate(timeout=90)
    answered = [result for result in results if isinstance(result, tuple)]
    assert answered, results
    for status, content_type, body in answered:
        assert content_type == "application/json" and status in (200, 503), (status, body[:200])
        if status == 503:
            assert "shutting down" in json.loads(body)["detail"]
    if drained:
        assert [status for status, _, _ in answered] == [200] * len(answered), results
    assert "Traceback" not in err + out, err[-3000:]
    assert process.returncode == 0, err[-3000:]
    assert err.strip().splitlines()[-1] == "server stopped."


@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGINT", "SIGINT"]], ids=["sigterm", "ctrl-c-twice"])
def test_stopping_with_requests_in_flight_answers_each_in_json_and_exits_0(built, signals):
    process, url, _ = _start_server(built["runs"]["deeper-lstm-norm-i"], "--port", "0")
    try:
        results = _stop_with_requests_in_flight(process, int(url.rsplit(":", 1)[1]), signals)
        _check_stopped_cleanly(process, results, drained=len(signals) == 1)
    finally:
        if process.poll() is None:
            process.kill()


# --- connections: idle ones are bounded and timed out, and a real request still gets in ----------------------


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_bounded_and_timed_out_while_real_requests_get_in(built):
    from vqa.serve.app import create_app
    from vqa.serve.engine import BUSY, Engine

    limit, idle_timeout = 8, 3
    server = ServerThread(create_app(Engine(built["runs"]["deeper-lstm-norm-i"])), max_connections=limit,
                          idle_timeout_s=idle_timeout)
    idle: list[socket.socket] = []
    stalled: list[socket.socket] = []
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        try:
            opened = time.perf_counter()
            for number in range(120):  # 15 times the limit: half send nothing, half a request head never finished
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=idle_timeout + 10))
                if number % 2:
                    idle[-1].sendall(b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            status, _, body = _get(port, "/api/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
            # Answered before any idle connection could time out: the new connection closed the longest idle one.
            assert time.perf_counter() - opened < idle_timeout
            assert len(server.server.server_state.connections) <= limit + 1

            # `limit` requests stalled in their bodies are in flight, and cannot be closed for a newcomer: one more
            # request is answered 503, in JSON.
            for _ in range(limit):
                stalled.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                stalled[-1].sendall(b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                                    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            deadline = time.monotonic() + 10
            while len(server.server.server_state.tasks) < limit and time.monotonic() < deadline:
                time.sleep(0.02)
            status, content_type, body = _get(port, "/api/health")
            assert (status, content_type, json.loads(body)) == (503, "application/json", {"detail": BUSY})
            for sock in stalled:
                sock.close()

            assert all(_closed_by_server(sock) for sock in idle)  # each closed for a newcomer

            # Below the limit, an idle connection is closed after idle_timeout, even one sending a byte at a time.
            idle = [socket.create_connection(("127.0.0.1", port), timeout=0.05) for _ in range(3)]
            opened = time.perf_counter()
            while not _closed_by_server(idle[0]) and time.perf_counter() - opened < idle_timeout + 10:
                idle[0].sendall(b"G")  # a request head, one byte every 50 ms
            closed = time.perf_counter() - opened
            assert idle_timeout - 0.5 < closed < idle_timeout + 5, closed
            for sock in idle[1:]:
                sock.settimeout(5)
                assert _closed_by_server(sock)
            assert _get(port, "/api/health")[0] == 200
        finally:
            for sock in idle + stalled:
                sock.close()
