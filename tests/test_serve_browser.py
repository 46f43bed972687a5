"""The page of `vqa serve` in a real browser: headless Chromium (through selenium and chromedriver)
uploads a real COCO photo, asks questions, and shows vqa predict's answers, the heatmap and the history.

A tiny stacked-attention run is built for the module (``serve_helpers.build_runs``) and served by
uvicorn in a thread on a free 127.0.0.1 port. Needs Debian's ``chromium`` and ``chromium-driver``
(.ci/run installs both) and the real sample in ../shared/fixtures; skips, saying which is missing,
without them. The screenshot is saved in the test's tmp folder and copied to /tmp/serve_screenshot.png.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from serve_helpers import ServerThread, ask_on_page, build_runs, chromium_browser, page_answers, same_answers

pytestmark = pytest.mark.slow  # one tiny training and one browser: ~30 s on 2 cores

SCREENSHOT_COPY = "/tmp/serve_screenshot.png"
PHOTO = "COCO_val2014_000000000192.jpg"


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_factory):
    return build_runs(tmp_path_factory.mktemp("serve_browser"), vectors_factory, models=("san",))


def test_the_page_answers_questions_about_an_uploaded_coco_photo(built, real_sample, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vqa.predict import Predictor
    from vqa.serve.app import create_app
    from vqa.serve.engine import Engine
    from vqa.serve.gallery import run_gallery

    browser = chromium_browser(tmp_path)
    run_dir = built["runs"]["san"]
    photo = real_sample / "images" / PHOTO
    predictor = Predictor(run_dir)
    try:
        with ServerThread(create_app(Engine(run_dir), run_gallery(run_dir))) as url:
            wait = WebDriverWait(browser, 60)
            browser.get(url + "/")
            wait.until(lambda b: "model san" in b.find_element(By.ID, "run").text)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#gallery img")) == 6)
            browser.find_element(By.ID, "file").send_keys(str(photo))
            wait.until(lambda b: b.find_element(By.ID, "preview").get_attribute("naturalWidth") not in (None, "0"))
            assert browser.find_element(By.ID, "preview-name").text == PHOTO

            ask_on_page(browser, wait, "what color is the car ?", 1)
            [expected] = predictor.answer([photo], ["what color is the car ?"], top_k=5)
            assert browser.find_element(By.ID, "result-question").text == "what color is the car ?"
            assert same_answers(page_answers(browser), expected.answers)
            bars = browser.find_elements(By.CSS_SELECTOR, "#answers .fill")
            widths = [bar.size["width"] for bar in bars]
            assert widths == sorted(widths, reverse=True) and widths[0] > 0  # bars as long as the scores
            heatmap = browser.find_element(By.ID, "heatmap")
            wait.until(lambda b: heatmap.get_attribute("naturalWidth") not in (None, "0"))
            assert heatmap.is_displayed() and int(heatmap.get_attribute("naturalWidth")) > 300  # two panels

            # Markup in a question is shown as text, never run or parsed.
            sneaky = '<img src=x onerror="document.title=\'pwned\'"> is there a cat ?'
            ask_on_page(browser, wait, sneaky, 2)
            assert browser.find_element(By.ID, "result-question").text == sneaky
            assert browser.title == "vqa serve: ask about an image"
            assert len(browser.find_elements(By.CSS_SELECTOR, "#result img")) == 1  # the heatmap only
            [expected_second] = predictor.answer([photo], [sneaky], top_k=5)
            assert same_answers(page_answers(browser), expected_second.answers)

            history = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#history li")]
            assert len(history) == 2 and history[0].startswith(sneaky) and history[1].startswith("what color")
            assert expected.answers[0][0] in history[1]
            screenshot = tmp_path / "serve.png"
            assert browser.save_screenshot(str(screenshot))
            shutil.copy(screenshot, SCREENSHOT_COPY)

            # A run image picked from the gallery starts its own history.
            browser.find_elements(By.CSS_SELECTOR, "#gallery button")[0].click()
            wait.until(lambda b: b.find_element(By.ID, "history-box").is_displayed() is False)
            assert "/api/images/11" in browser.find_element(By.ID, "preview").get_attribute("src")
            ask_on_page(browser, wait, "is there a cat ?", 3)
            [expected_pick] = predictor.answer([built["photos"]["val2014"][0]], ["is there a cat ?"], top_k=5)
            assert same_answers(page_answers(browser), expected_pick.answers)
            assert len(browser.find_elements(By.CSS_SELECTOR, "#history li")) == 1
    finally:
        browser.quit()
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 200  # the photo, text and bars, not a blank page
    accent = np.all(np.abs(pixels.astype(int) - (0x38, 0x69, 0xB3)) <= 8, axis=1).mean()
    assert accent > 0.001  # the score bars are drawn
