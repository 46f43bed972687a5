"""Builders for the ``vqa serve`` tests: tiny trained runs, multipart bodies, and a real server in a thread.

Not a test module: the serve test files import from here (``from serve_helpers import ...``).
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import THREE_QUESTIONS, three_question_items, write_official_split

SPLITS = {"train2014": list(range(1, 9)), "val2014": list(range(11, 17))}
GRID = (4, 4, 6)
QUESTION_WORDS = {word for question, _, _ in THREE_QUESTIONS for word in question.split()}
QUESTION_WORDS |= {"what", "is", "the", "man", "holding", "where", "dog", "color", "sky"}


def photo(path: Path, seed: int, size=(48, 40)) -> None:
    """A grey JPEG with a coloured square at a place (and of a colour) that depends on ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(photo_bytes(seed, size))


def photo_bytes(seed: int, size=(48, 40), format="JPEG") -> bytes:
    """The bytes of ``photo``'s picture, as a JPEG (or another Pillow ``format``)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.full((height, width, 3), 110, np.uint8)
    top, left = rng.integers(0, height - 14), rng.integers(0, width - 14)
    pixels[top:top + 14, left:left + 14] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, quality=95)
    return buffer.getvalue()


def grid_backbone(path: Path) -> None:
    """32 x 32 images -> conv -> a 4 x 4 x 6 max-pooled grid (the last 4-D layer) -> 8-d features, as .keras."""
    import keras

    keras.utils.set_random_seed(1)
    images = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(GRID[2], 3, padding="same", activation="relu")(x)
    grid = keras.layers.MaxPooling2D(8, name="grid_pool")(x)
    features = keras.layers.Dense(8, name="features")(keras.layers.GlobalAveragePooling2D()(grid))
    keras.Model(images, features).save(path)


def build_runs(root: Path, vectors_factory, models=("deeper-lstm-norm-i",)) -> dict:
    """Raw data with train and val images, one preprocessed folder with fc7 and grids, one run per model.

    Returns:
        {"raw", "out": the preprocessed folder, "runs": {model name: run folder},
         "photos": {split: [image files]}}.
    """
    from helpers import preprocess
    from vqa.config import Config, ModelConfig, TrainConfig
    from vqa.layout import image_path
    from vqa.train import train

    raw, out = root / "raw", root / "processed"
    for split, image_ids in SPLITS.items():
        write_official_split(raw, split, three_question_items(image_ids))
        for image_id in image_ids:
            photo(image_path(raw, split, image_id), image_id)
    weights = root / "grid_backbone.keras"
    grid_backbone(weights)
    preprocess(raw, out, tuple(SPLITS), vectors=str(vectors_factory(QUESTION_WORDS)), weights=str(weights),
               features="both")
    runs = {}
    for name in models:
        model = ModelConfig(name=name, lstm_units=8, lstm_layers=1, hidden_units=8, fusion_units=8)
        train(out, root / name, Config(model=model, train=TrainConfig(epochs=1, batch_size=16)),
              log=lambda message: None)
        runs[name] = root / name
    photos = {split: [image_path(raw, split, i) for i in ids] for split, ids in SPLITS.items()}
    return {"raw": raw, "out": out, "runs": runs, "photos": photos}


def answers_of(result: dict) -> list[tuple[str, float]]:
    """(answer, score) pairs of one ``vqa predict --json``-shaped result."""
    return [(item["answer"], item["score"]) for item in result["answers"]]


def same_answers(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    """The same answers with the same scores, to the 4 decimals printed, ranked by descending score.

    Batched with other requests, a question's floats may differ from a lone ``vqa predict`` call's in
    the last bits, so a score may round one unit apart and near-equal scores may swap places.
    """
    scores = [score for _, score in got]
    return (dict(got).keys() == dict(expected).keys() and scores == sorted(scores, reverse=True)
            and all(abs(dict(got)[answer] - score) <= 1.5e-4 for answer, score in expected))


def free_socket() -> socket.socket:
    """A listening socket on 127.0.0.1 at a free port."""
    from vqa.serve import bind

    return bind("127.0.0.1", 0)


class ServerThread:
    """``vqa serve``'s uvicorn server for ``app`` on 127.0.0.1, in a thread: ``with ServerThread(app) as url: ...``.

    ``options`` go to ``vqa.serve.server.server_config`` (max_connections, idle_timeout_s, grace_s).
    """

    def __init__(self, app, **options):
        from vqa.serve.server import Server, server_config

        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = Server(server_config(app, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "the test server did not stop"


# --- the page in headless Chromium ----------------------------------------------------------------------------------


def chromium_browser(tmp_path):
    """A headless Chromium driven by chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver; "
                    ".ci/run does this)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def page_answers(browser) -> list[tuple[str, float]]:
    """The (answer, score) rows the page shows."""
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#answers li")
    return [(row.find_element(By.CLASS_NAME, "answer").text, float(row.find_element(By.CLASS_NAME, "score").text))
            for row in rows]


def ask_on_page(browser, wait, question: str, asked: int) -> None:
    """Type ``question``, press Ask, and wait for the page's ``asked``-th result; fails on a shown error."""
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    browser.find_element(By.ID, "ask-button").click()
    wait.until(lambda b: b.find_element(By.ID, "result").get_attribute("data-asked") == str(asked)
               or b.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
