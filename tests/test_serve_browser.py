"""The page in a real headless browser (Debian chromium + chromedriver, driven by Selenium).

The server runs on loopback on a free port; the browser uploads a prior, types a hypothesis,
generates, and the test checks the counterfactual image and the interpretation appear, that a
text file gets a readable error, and that the page made no request off this machine.
A screenshot is saved to ``test-artifacts/serve_browser.png``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import urllib.request
import zipfile
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from serve_fixtures import FakePipeline, free_port, write_test_images

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (install Debian's chromium + chromium-driver: bash scripts/install_system_deps.sh)"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_test_images(tmp_path_factory.mktemp("serve_browser_images"))


@pytest.fixture(scope="module")
def server(images):
    pytest.importorskip("gradio")
    from progemu.serve.app import build_app, launch
    from progemu.serve.examples import Example

    pipeline = FakePipeline(delay_s=0.5)
    demo = build_app(pipeline, examples=[Example("synthetic chest", images["chest"], "New left pleural effusion has developed.")])
    url = launch(demo, port=free_port(), quiet=True)
    yield url, pipeline
    demo.close()


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager must not phone home
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="progemu-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,2200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The performance log lists every network request, to prove the page stays on loopback.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return elements[0].text if elements else ""


def _loaded_images(driver, selector: str) -> list[dict]:
    """The ``<img>`` elements under ``selector`` that have finished loading, with their sizes."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll(arguments[0] + ' img'))
             .filter(img => img.complete && img.naturalWidth > 0)
             .map(img => ({src: img.src, w: img.naturalWidth, h: img.naturalHeight}));""",
        selector,
    )


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, "#prior-file input[type=file]")
    field.send_keys(str(path))


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_page_in_browser_upload_generate_and_errors(server, browser, images):
    from selenium.webdriver.common.by import By

    url, pipeline = server
    browser.get(url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    assert "not diagnoses" in _text(browser, "#disclaimer")

    # 1. A text file is refused with a message naming it.
    _upload(browser, images["text"])
    _wait(browser, lambda d: "not a readable image" in _text(d, "#prior-status"))
    assert "notes.txt" in _text(browser, "#prior-status")

    # 2. Clear it; a real upload, a typed hypothesis, generate.
    browser.find_element(By.CSS_SELECTOR, "#prior-file button[aria-label='Clear']").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#prior-file input[type=file]"))
    _upload(browser, images["chest"])
    _wait(browser, lambda d: "Prior loaded (256 x 256 px)" in _text(d, "#prior-status"))
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    prompt.clear()
    prompt.send_keys("New left pleural effusion")
    calls_before = len(pipeline.calls)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    _wait(browser, lambda d: len(_loaded_images(d, "#comparison")) >= 2 and _text(d, "#interpretation").strip())
    interpretation = _text(browser, "#interpretation")
    assert "blunting of the costophrenic angle" in interpretation
    slider = _loaded_images(browser, "#comparison")
    # The fake's 64-px counterfactual, enlarged 6x by pixel repetition for display (384 px).
    assert all((image["w"], image["h"]) == (384, 384) for image in slider), slider
    assert _loaded_images(browser, "#difference") and _loaded_images(browser, "#attention")
    assert "not a diagnosis" in _text(browser, "#result-status")
    assert len(pipeline.calls) == calls_before + 1
    call = pipeline.calls[-1]
    assert call["prompt"] == "New left pleural effusion" and call["shape"] == (256, 256)
    assert (call["samples"], call["cfg_scale"], call["seed"]) == (1, 3.0, 0)
    # The counterfactual shown is the pipeline's: the bright disc is on the image right ("left").
    src = [image["src"] for image in slider]
    pixels = browser.execute_script(
        """const img = Array.from(document.querySelectorAll('#comparison img')).find(i => i.src === arguments[0]);
           const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
           const g = c.getContext('2d'); g.drawImage(img, 0, 0);
           const d = g.getImageData(0, 0, c.width, c.height).data; const out = [];
           for (let i = 0; i < d.length; i += 4) out.push(d[i]); return out;""",
        src[-1],
    )
    counterfactual = np.asarray(pixels, dtype=np.float32).reshape(384, 384)[::6, ::6] / 255.0
    assert counterfactual[40:50, 41:51].mean() > counterfactual[40:50, 13:23].mean() + 0.3

    # 3. Clicking the second phrase redraws the attention overlay in that phrase's colour.
    before = _loaded_images(browser, "#attention")[0]["src"]
    phrase = [e for e in browser.find_elements(By.CSS_SELECTOR, "#interpretation span, #interpretation div")
              if e.text.strip() == "a new opacity"]
    assert phrase, "the second phrase is not rendered as its own highlighted piece"
    phrase[0].click()
    _wait(browser, lambda d: _loaded_images(d, "#attention") and _loaded_images(d, "#attention")[0]["src"] != before, timeout=30)

    # 4. A download of everything is offered, and it holds the prior, the result and a summary.
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#download a")]
    links = [link for link in links if link and link.endswith(".zip")]
    assert links, "no zip download link"
    with urllib.request.urlopen(links[0], timeout=30) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = set(archive.namelist())
    assert {"prior.png", "summary.json", "views/difference.png", "result/counterfactual_0.png"} <= names, names
    summary = json.loads(archive.read("summary.json"))
    assert summary["prompt"] == "New left pleural effusion" and summary["phrases"] == ["blunting of the costophrenic angle", "a new opacity"]

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve_browser.png"))

    # 5. Nothing left this machine: every request went to the loopback server (or data:/blob:).
    outside = [u for u in _requested_urls(browser) if urlparse(u).scheme in {"http", "https", "ws", "wss"}
               and urlparse(u).hostname not in {"127.0.0.1", "localhost"}]
    assert not outside, f"the page requested off-machine URLs: {outside[:5]}"


@pytest.mark.slow
def test_page_in_browser_with_a_real_checkpoint(browser, images, tmp_path):
    """The real path: a tiny checkpoint saved by progemu, served by the `progemu serve` CLI."""
    from selenium.webdriver.common.by import By

    from serve_fixtures import ServeProcess, tiny_real_checkpoint

    with ServeProcess(["--model", str(tiny_real_checkpoint())], tmp_path / "tmp") as url:
        browser.get(url)
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#prior-file input[type=file]"))
        _upload(browser, images["chest"])
        _wait(browser, lambda d: "Prior loaded" in _text(d, "#prior-status"))
        prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
        prompt.clear()
        prompt.send_keys("New left pleural effusion has developed.")
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        _wait(browser, lambda d: len(_loaded_images(d, "#comparison")) >= 2 and _text(d, "#interpretation").strip(), timeout=120)
        slider = _loaded_images(browser, "#comparison")
        assert all((image["w"], image["h"]) == (512, 512) for image in slider), slider  # 256-px prior grid x 2
        assert _loaded_images(browser, "#difference")
        assert "1 sample(s)" in _text(browser, "#result-status")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve_browser_real_checkpoint.png"))
