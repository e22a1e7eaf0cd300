"""The `lav2 serve` chat page in a real browser: Debian's headless Chromium driven by selenium.

Uploads a synthetic image, asks, waits for the streamed answer and checks it equals the API's answer for the same
request; a second turn checks the multi-turn history; Clear empties it. A screenshot goes to the test's tmp dir.
Nothing downloads a browser: `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium`,
`chromium-driver`, installed by `.ci/run`) are used, and the test is skipped only when they are absent.
"""

import os

import httpx
import pytest

from lav2_jax.checkpoint import load_pretrained
from lav2_jax.serve.app import ServeSettings, create_app
from lav2_jax.serve.schema import Defaults
from lav2_jax.serve.server import ServerThread
from serve_utils import SYSTEM, data_url, png_bytes, write_checkpoint

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-page")
    bundle = load_pretrained(write_checkpoint(root), layout="unstacked")
    settings = ServeSettings(model_name="tiny-page", defaults=Defaults(max_tokens=MAX_TOKENS, temperature=0.0,
                                                                        top_p=0.75, system=SYSTEM))
    with ServerThread(create_app(bundle, settings)) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never try to fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1150,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(600)
    yield driver
    driver.quit()


def api_answer(url: str, messages) -> str:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "temperature": 0,
                                                       "max_tokens": MAX_TOKENS}, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def ask(driver, question: str, turn: int) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "question")
    box.send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 600).until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, '#log .msg[data-done="1"]')) == turn)
    out = driver.find_elements(By.CSS_SELECTOR, '#log .msg[data-done="1"]')[-1]
    assert "error" not in out.get_attribute("class"), out.text
    return driver.execute_script("return arguments[0].textContent", out)


def test_chat_page_in_chromium(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "synthetic.png"
    image.write_bytes(png_bytes(48, 36, seed=3))
    url = data_url(image.read_bytes())
    browser.get(served + "/")
    assert browser.find_element(By.ID, "model").text == "tiny-page"
    assert browser.find_element(By.ID, "temperature").get_attribute("value") == "0"
    assert browser.find_element(By.ID, "max_tokens").get_attribute("value") == str(MAX_TOKENS)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "preview").is_displayed())

    first = ask(browser, "the cat", 1)
    msg1 = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "the cat"}]}
    assert first == api_answer(served, [msg1])
    second = ask(browser, "a dog", 2)  # the page sends the history: the image turn, the answer, the question
    assert second == api_answer(served, [msg1, {"role": "assistant", "content": first},
                                         {"role": "user", "content": "a dog"}])
    shot = tmp_path / "chat_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0

    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .msg") == []
    assert not browser.find_element(By.ID, "preview").is_displayed()
