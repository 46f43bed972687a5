"""`vqa serve`'s JSON API through FastAPI's TestClient: vqa predict's answers, the cache, micro-batching, bad input.

Three tiny runs are built once for the module (``serve_helpers.build_runs``): a global model on the
stand-in backbone's 8-d features, a stacked-attention (san) model on its 4 x 4 x 6 grid, and a
question-only model, each trained one epoch on official-layout JSON and JPEGs in tmp_path. Expected answers come from a
separate ``vqa.predict.Predictor`` (what ``vqa predict`` runs) on the image files.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from serve_helpers import answers_of, build_runs, photo_bytes, same_answers

pytestmark = pytest.mark.slow  # one tiny preprocess and three one-epoch trainings: ~30 s on 2 cores

GLOBAL, SAN, BLIND = "deeper-lstm-norm-i", "san", "question-only"


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_factory):
    return build_runs(tmp_path_factory.mktemp("serve_api"), vectors_factory, models=(GLOBAL, SAN, BLIND))


@pytest.fixture(scope="module")
def servers(built):
    """name -> (TestClient, Engine, Predictor) for both runs, the clients open for the whole module."""
    from fastapi.testclient import TestClient

    from vqa.predict import Predictor
    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery

    opened = {}
    for name, run_dir in built["runs"].items():
        engine = Engine(run_dir)
        client = TestClient(create_app(engine, run_gallery(run_dir)))
        client.__enter__()
        opened[name] = (client, engine, Predictor(run_dir))
    yield opened
    for client, _, _ in opened.values():
        client.__exit__(None, None, None)


def _ask(client, image_bytes=None, questions=("what color is the car ?",), name="photo.jpg", **fields):
    files = {"image": (name, image_bytes, "image/jpeg")} if image_bytes is not None else None
    return client.post("/api/answer", files=files, data={"question": list(questions), **fields})


def _one_sentence(detail) -> bool:
    return (isinstance(detail, str) and detail.endswith((".", "?")) and "\n" not in detail
            and "Traceback" not in detail and not re.search(r"[.?!] +[A-Z]", detail))


# --- the answers are vqa predict's ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [GLOBAL, SAN])
def test_one_question_gets_exactly_the_answer_of_vqa_predict(servers, built, name):
    client, _, predictor = servers[name]
    photo = built["photos"]["val2014"][2]
    response = _ask(client, photo.read_bytes(), ["how many dogs are there ?"], top_k="2")
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    [expected] = predictor.answer([photo], ["how many dogs are there ?"], top_k=2)
    # One image and one question: the same batch shapes as vqa predict, so the same floats.
    assert result["answers"] == expected.to_json()["answers"]
    assert result["notes"] == expected.notes and result["question"] == "how many dogs are there ?"
    assert result["image"] == "photo.jpg"


@pytest.mark.parametrize("name", [GLOBAL, SAN])
def test_several_questions_in_one_request_are_answered_in_order(servers, built, name):
    client, _, predictor = servers[name]
    photo = built["photos"]["train2014"][4]
    questions = ["is there a cat ?", "what color is the car ?", "xyzzy plugh", "how many dogs are there ?"]
    response = _ask(client, photo.read_bytes(), questions, top_k="10")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = predictor.answer([photo] * len(questions), questions, top_k=10)
    assert [result["question"] for result in results] == questions
    for result, answer in zip(results, expected):
        assert same_answers(answers_of(result), answer.answers)
        assert result["notes"] == answer.notes
    assert "none of the question's words" in results[2]["notes"][0]


def test_an_attention_run_returns_vqa_predicts_maps_and_draws_them(servers, built):
    from vqa import heatmap

    client, engine, predictor = servers[SAN]
    photo = built["photos"]["val2014"][3]
    response = _ask(client, photo.read_bytes(), ["what color is the car ?"], heatmap="true")
    body = response.json()
    maps = np.array(body["results"][0]["attention"])
    assert maps.shape == (2, 4, 4) and np.allclose(maps.sum(axis=(1, 2)), 1, atol=1e-4)
    [expected] = predictor.answer([photo], ["what color is the car ?"], with_attention=True)
    assert np.allclose(maps, expected.attention, atol=1e-5)
    assert body["map_names"] == ["hop 1", "hop 2"]
    [uri] = body["heatmaps"]
    assert uri.startswith("data:image/jpeg;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    # Two 48 x 40 panels side by side, under one label strip (the photo is smaller than the panel size).
    assert picture.size == (2 * 48 + heatmap.GAP, 40 + heatmap.LABEL_HEIGHT)
    assert "heatmaps" not in _ask(client, photo.read_bytes()).json()  # drawn only when asked for


def test_a_global_run_has_no_maps(servers, built):
    client, _, _ = servers[GLOBAL]
    body = _ask(client, built["photos"]["val2014"][0].read_bytes(), heatmap="true").json()
    assert "attention" not in body["results"][0] and "heatmaps" not in body and "map_names" not in body


def test_a_question_only_run_needs_no_image(servers):
    client, _, predictor = servers[BLIND]
    body = client.post("/api/answer", data={"question": ["is there a cat ?", "how many dogs are there ?"]}).json()
    expected = predictor.answer([None, None], ["is there a cat ?", "how many dogs are there ?"])
    assert body["image"] is None
    assert [result["answers"] for result in body["results"]] == [answer.to_json()["answers"] for answer in expected]
    assert client.get("/api/health").json()["uses_image"] is False


# --- the cache and the micro-batcher -----------------------------------------------------------------------------


def test_a_second_question_about_the_same_image_skips_the_backbone(servers):
    client, engine, _ = servers[GLOBAL]
    passes = lambda: engine.predictor.backbone.batches_run  # noqa: E731
    image, other = photo_bytes(101), photo_bytes(102)
    before = passes()
    first = _ask(client, image, ["is there a cat ?"]).json()
    assert passes() == before + 1 and first["image"]["cached"] is False
    second = _ask(client, image, ["what color is the car ?"], name="renamed.jpg").json()
    assert passes() == before + 1 and second["image"]["cached"] is True
    assert second["image"]["sha256"] == first["image"]["sha256"] and second["results"][0]["image"] == "renamed.jpg"
    third = _ask(client, other, ["is there a cat ?"]).json()
    assert passes() == before + 2 and third["image"]["cached"] is False
    assert third["image"]["sha256"] != first["image"]["sha256"]


def test_a_run_image_by_id_is_cached_like_its_upload(servers, built):
    client, engine, predictor = servers[GLOBAL]
    photo = built["photos"]["val2014"][5]
    passes = engine.predictor.backbone.batches_run
    by_id = client.post("/api/answer", data={"image_id": "16", "question": "is there a cat ?"}).json()
    uploaded = _ask(client, photo.read_bytes(), ["is there a cat ?"]).json()
    assert engine.predictor.backbone.batches_run == passes + 1
    assert by_id["image"]["id"] == "16" and by_id["results"][0]["image"] == "16"
    assert uploaded["image"]["cached"] is True and uploaded["image"]["sha256"] == by_id["image"]["sha256"]
    [expected] = predictor.answer([photo], ["is there a cat ?"])
    assert by_id["results"][0]["answers"] == expected.to_json()["answers"]


def test_concurrent_requests_share_one_model_pass(servers, monkeypatch, tmp_path):
    client, engine, predictor = servers[GLOBAL]
    calls = []
    model_call = engine.predictor.model.predict_on_batch
    monkeypatch.setattr(engine.predictor.model, "predict_on_batch",
                        lambda inputs: calls.append(len(inputs["question_ids"])) or model_call(inputs))
    monkeypatch.setattr(engine, "window_s", 0.5)  # all eight land in one window, even on a loaded machine
    questions = ["is there a cat ?", "what color is the car ?", "how many dogs are there ?", "what is the man ?",
                 "is the sky red ?", "where is the dog ?", "what color is the sky ?", "is there a car ?"]
    images = [photo_bytes(200 + number) for number in range(len(questions))]
    passes = engine.predictor.backbone.batches_run
    start, responses = threading.Barrier(len(questions)), [None] * len(questions)

    def ask(number):
        start.wait()
        responses[number] = _ask(client, images[number], [questions[number]], top_k="10")

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(response.status_code == 200 for response in responses)
    assert len(calls) <= 2 and sum(calls) >= len(questions)  # one pass (two at worst) for the eight questions
    assert engine.predictor.backbone.batches_run - passes <= 2  # and one backbone pass for the eight new images
    files = []
    for number, image in enumerate(images):
        path = tmp_path / f"concurrent_{number}.jpg"
        path.write_bytes(image)
        files.append(path)
    expected = predictor.answer(files, questions, top_k=10)
    for response, question, answer in zip(responses, questions, expected):
        [result] = response.json()["results"]
        assert result["question"] == question and same_answers(answers_of(result), answer.answers)


def test_closing_the_engine_answers_what_was_queued_and_refuses_more(built):
    from vqa.serve.engine import Engine
    from vqa.serve.uploads import ClientError

    engine = Engine(built["runs"][BLIND], window_s=0.2)
    engine.start()
    queued = [engine.submit([f"is there a cat {'?' * n}"], 3, None) for n in range(1, 4)]
    engine.close()
    assert [len(job.future.result(timeout=30)) for job in queued] == [1, 1, 1]
    with pytest.raises(ClientError, match="shutting down") as refused:
        engine.submit(["is there a cat ?"], 3, None)
    assert refused.value.status == 503


def _batch_rows(inputs) -> int:
    return len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)


@pytest.mark.parametrize("name", [GLOBAL, SAN])
def test_the_engine_calls_each_model_with_a_few_fixed_batch_sizes_only(servers, monkeypatch, name):
    from vqa.serve.engine import Job, padded, padded_size
    from vqa.serve.uploads import PreparedImage, content_key, decode

    _, engine, _ = servers[name]
    predictor = engine.predictor
    assert engine.question_sizes == (1, 2, 4, 8, 16, 32, 64) and engine.image_sizes == (1, 2, 4, 8, 16)
    models = {"model": predictor.model, "backbone": predictor.backbone.model}
    if engine.has_attention:
        models["maps"] = predictor.maps_model
    calls = {key: [] for key in models}
    for key, model in models.items():
        monkeypatch.setattr(model, "predict_on_batch", lambda inputs, key=key, call=model.predict_on_batch:
                            calls[key].append(_batch_rows(inputs)) or call(inputs))
    questions = ["is there a cat ?", "what color is the car ?", "how many dogs are there ?", "where is the dog ?",
                 "what is the man holding ?"]
    for count in (1, 3, 5):
        images = [photo_bytes(500 + 10 * count + number) for number in range(count)]  # none in the cache yet
        pixels = [decode(data, engine.image_size) for data in images]
        jobs = [Job([questions[number]], 3, PreparedImage(content_key(data), data, "p.jpg", pixels[number], 48, 40),
                    with_attention=engine.has_attention) for number, data in enumerate(images)]
        answers = engine.answer_batch(jobs)
        # Each answer is read from the first `count` rows of the model's output for the padded batch.
        size = padded_size(count, engine.question_sizes)
        ids, _ = predictor.encode(questions[:count])
        rows = predictor.image_rows(padded(np.stack(pixels), padded_size(count, engine.image_sizes)))[:count]
        scores = predictor.scores(padded(ids, size), padded(rows, size))
        assert [job_answers[0].answers for job_answers in answers] == [predictor.top_answers(row, 3)
                                                                       for row in scores[:count]]
    assert set(calls["model"]) == {1, 4, 8} and set(calls["backbone"]) == {1, 4, 8}, calls
    if engine.has_attention:
        assert set(calls["maps"]) == {1, 4, 8}, calls


# --- bad input: one sentence each, and the server keeps serving ------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def _bad_requests():
    good, large = photo_bytes(7), photo_bytes(7, size=(320, 240))  # large: the cut falls in the pixel data
    return {
        "upload over 10 MB": (dict(files={"image": ("big.jpg", good + b"\0" * 10_100_000)},
                                   data={"question": "is it red ?"}), 413, "MB"),
        "request body far over 10 MB": (dict(files={"image": ("huge.jpg", b"\xff" * 12_000_000)},
                                             data={"question": "is it red ?"}), 413, "limit"),
        "decompression bomb": (dict(files={"image": ("bomb.png", _png_claiming(30_000, 30_000))},
                                    data={"question": "is it red ?"}), 413, "megapixels"),
        "not an image": (dict(files={"image": ("notes.jpg", b"these are my notes, not a photo\n" * 20)},
                              data={"question": "is it red ?"}), 415, "JPEG or PNG"),
        "truncated JPEG": (dict(files={"image": ("cut.jpg", large[: len(large) * 2 // 3])},
                                data={"question": "is it red ?"}), 422, "cannot be decoded"),
        "cut inside its header": (dict(files={"image": ("cut.jpg", good[:300])},
                                       data={"question": "is it red ?"}), 422, "header"),
        "empty file": (dict(files={"image": ("empty.jpg", b"")}, data={"question": "is it red ?"}), 422, "empty"),
        "empty question": (dict(files={"image": ("a.jpg", good)}, data={"question": "   "}), 422, "empty"),
        "500-word question": (dict(files={"image": ("a.jpg", good)}, data={"question": "word " * 500}), 422,
                              "500 words"),
        "no question": (dict(files={"image": ("a.jpg", good)}), 422, "question"),
        "no image": (dict(data={"question": "is it red ?"}), 422, "image_id"),
        "unknown image id": (dict(data={"question": "is it red ?", "image_id": "999"}), 404, "GET /api/images"),
        "a path as image id": (dict(data={"question": "is it red ?", "image_id": "../../../../etc/passwd"}), 404,
                               "not one of the run's images"),
        "a train image's id": (dict(data={"question": "is it red ?", "image_id": "1"}), 404, "not one of"),
        "file and image id": (dict(files={"image": ("a.jpg", good)}, data={"question": "x ?", "image_id": "11"}),
                              422, "not both"),
        "top_k 0": (dict(files={"image": ("a.jpg", good)}, data={"question": "x ?", "top_k": "0"}), 422, "top_k"),
        "top_k not a number": (dict(files={"image": ("a.jpg", good)}, data={"question": "x ?", "top_k": "many"}),
                               422, "top_k"),
        "33 questions": (dict(files={"image": ("a.jpg", good)}, data={"question": ["is it red ?"] * 33}), 422,
                         "at most 32"),
        # The multipart parser's limits, in our words.
        "5,000 questions": (dict(files={"image": ("a.jpg", good)}, data={"question": ["is it red ?"] * 5000}), 422,
                            "send at most 32 questions per request"),
        "three files": (dict(files=[("image", ("a.jpg", good)), ("image", ("b.jpg", good)), ("x", ("c.jpg", good))],
                             data={"question": "is it red ?"}), 422, "more than two files"),
        "a 2 MB question": (dict(files={"image": ("a.jpg", good)}, data={"question": "red " * 500_000}), 422,
                            "at most 1000 characters"),
        "JSON body": (dict(json={"question": "is it red ?", "image_id": "11"}), 415,
                      "The request body is application/json; send the image and questions as multipart/form-data"),
        "no body": (dict(), 415, "no Content-Type"),
        "form cut short": (_cut_short(dict(files={"image": ("a.jpg", large)}, data={"question": "is it red ?"})), 400,
                           "cut short"),
        "upload 1 byte over 10 MB": (dict(files={"image": ("big.jpg", good + b"\0" * (10_000_001 - len(good)))},
                                          data={"question": "is it red ?"}), 413,
                                     "The upload is 10,000,001 bytes, over the 10 MB (10,000,000-byte) limit"),
    }


def _cut_short(request: dict) -> dict:
    """``request`` (httpx2's files= and data=) as the raw multipart body, cut in the middle of its last part."""
    import httpx2

    encoded = httpx2.Request("POST", "http://127.0.0.1/api/answer", **request)
    body = encoded.read()
    return dict(content=body[: len(body) - 200], headers={"content-type": encoded.headers["content-type"]})


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_input_gets_one_sentence_and_the_server_keeps_serving(servers, case):
    client, engine, _ = servers[GLOBAL]
    request, status, phrase = _bad_requests()[case]
    response = client.post("/api/answer", **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert _one_sentence(detail) and phrase in detail, detail
    after = _ask(client, photo_bytes(8), ["is there a cat ?"])
    assert after.status_code == 200 and len(after.json()["results"][0]["answers"]) == 3


def test_other_mistakes_are_sentences_too(servers):
    client, _, _ = servers[GLOBAL]
    for method, path, status in [("GET", "/nothing/here", 404), ("GET", "/api/answer", 405),
                                 ("GET", "/api/images?limit=0", 422)]:
        response = client.request(method, path)
        assert response.status_code == status and _one_sentence(response.json()["detail"]), response.text


# --- the run's images, the page, the docs ------------------------------------------------------------------------


def test_the_runs_val_images_are_listed_by_id_and_served(servers, built):
    client, _, _ = servers[GLOBAL]
    listing = client.get("/api/images").json()
    assert [image["id"] for image in listing["images"]] == ["11", "12", "13", "14", "15", "16"]
    assert listing["total"] == 6 and listing["images"][0]["questions"][0] == "is there a cat ?"
    assert [image["id"] for image in client.get("/api/images?offset=4&limit=5").json()["images"]] == ["15", "16"]
    served = client.get("/api/images/13")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.content == built["photos"]["val2014"][2].read_bytes()
    for wrong in ("1", "..%2F..%2Fraw%2Fval2014%2FCOCO_val2014_000000000011.jpg", "%2Fetc%2Fpasswd"):
        response = client.get(f"/api/images/{wrong}")
        assert response.status_code == 404 and _one_sentence(response.json()["detail"])


def test_health_describes_the_run(servers):
    client, engine, _ = servers[SAN]
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "san" and health["attention"] is True
    assert health["answers"] == 3 and health["images"] == 6 and health["image_size"] == [32, 32]
    assert health["limits"]["max_upload_bytes"] == 10_000_000
    assert health["requests"] == engine.jobs_done


def test_the_page_its_files_and_the_docs_are_served(servers):
    client, _, _ = servers[GLOBAL]
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "fetch(\"/api/answer\"" in script.text
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text and "eval(" not in script.text
    assert client.get("/static/style.css").status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    schema = client.get("/openapi.json").json()
    assert {"/api/answer", "/api/health", "/api/images", "/api/images/{image_id}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    assert json.loads(client.get("/api/health").text)["status"] == "ok"


def test_the_docs_page_needs_nothing_from_the_network(servers):
    client, _, _ = servers[GLOBAL]
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle(" in page.text
    urls = [found[0] or found[1] for found in re.findall(r'(?:src|href)="([^"]+)"|url: \'([^\']+)\'', page.text)]
    assert len(urls) == 4, urls  # its style, icon and script, and the schema
    assert "http://" not in page.text and "https://" not in page.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url
