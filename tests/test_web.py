"""web.py in a real browser: start it on a free loopback port, open the page in headless Chromium,
send a message, see the streamed reply, clear the conversation; a screenshot is saved."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from net import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver: run `make install-dev` "
                                           "(apt-get install chromium chromium-driver)")]


@pytest.fixture(scope="module")
def web_server(default_model_dir, tmp_path_factory):
    """web.py on the embedded model: ``(url, log file)``, shared by the tests of this module."""
    tmp_path = tmp_path_factory.mktemp("web")
    port, log = free_port(), open(tmp_path / "web.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "web.py"), "--model_name_or_path", default_model_dir,
                             "--port", str(port), "--greedy", "--max_new_tokens", "16"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "web.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url, tmp_path / "web.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture()
def web(web_server):
    return web_server[0]


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_state(driver) -> tuple[bool, list[str]]:
    """(a reply is being generated, the bot messages' texts), read in one script run.

    One atomic read: element handles kept across polls go stale when Gradio re-renders the
    chatbot (every streamed piece, Clear), which made ``.text`` raise under load.
    """
    return tuple(driver.execute_script(
        "const chat = document.getElementById('chatbot');"
        "return [chat.querySelector('.generating, .pending') !== null,"
        "        Array.from(chat.querySelectorAll(\"[data-testid='bot']\")).map(m => m.innerText.trim())];"))


def settled_reply(count: int):
    """A wait condition: ``count`` bot messages, the last non-empty, nothing generating, and the
    same page state at two successive polls (the final streamed piece has been rendered)."""
    seen = []

    def check(driver):
        state = page_state(driver)
        busy, texts = state
        seen.append(state)
        done = not busy and len(texts) == count and texts[-1] and len(seen) > 1 and seen[-2] == state
        return texts if done else False

    return check


def test_chat_page_answers_in_the_browser(web, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    browser.get(web)
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))
    assert "smollm2-135m-instruct" in browser.find_element(By.ID, "model-name").text
    browser.find_element(By.CSS_SELECTOR, "#settings button, #settings .label-wrap").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#settings input[type=range]")) == 5)  # the sliders

    def bot_messages(driver):
        return page_state(driver)[1]

    box.send_keys("Name three colours.")
    box.send_keys(Keys.ENTER)
    (reply,) = wait.until(settled_reply(1))
    assert reply and "Name three colours." in browser.find_element(By.ID, "chatbot").text
    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    browser.find_element(By.ID, "clear").click()
    wait.until(lambda d: not bot_messages(d))


def test_a_stopped_reply_is_not_sent_back_to_the_model(web_server, browser):
    """Stop pressed while a reply is on its way (here before any text: a long prompt takes seconds to
    read): the turn stays on the page, marked, and the next message is sent without it (web.py logs
    what each reply was given)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from alpaca_cot.webui import STOPPED_NOTE

    url, log = web_server
    wait, fast = WebDriverWait(browser, 180), WebDriverWait(browser, 180, poll_frequency=0.05)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))

    def texts(driver, who):  # one script run, no element handles kept (see page_state)
        return driver.execute_script(
            "return Array.from(document.querySelectorAll(\"#chatbot [data-testid='\" + arguments[0] + \"']\"))"
            ".map(m => m.innerText.trim());", who)

    # A long message (set in one step rather than typed): its prompt takes the model seconds to
    # read, so Stop lands before any reply text.
    box = browser.find_element(By.CSS_SELECTOR, "#message textarea")
    browser.execute_script("arguments[0].value = arguments[1];"
                           "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                           box, "Describe the sea in detail. " * 400)
    browser.find_element(By.ID, "send").click()
    fast.until(lambda d: texts(d, "user"))  # the turn is on the page (and in the page's state)
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: any(STOPPED_NOTE in t for t in texts(d, "bot")))
    wait.until(lambda d: not page_state(d)[0])  # the stopped turn has settled: the page re-renders no more
    box = browser.find_element(By.CSS_SELECTOR, "#message textarea")
    box.send_keys("Name three colours.")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: len(texts(d, "user")) == 2 and not page_state(d)[0])
    wait.until(lambda d: "reply 2:" in log.read_text())
    line = next(line for line in log.read_text().splitlines() if "reply 2:" in line)
    assert "0 earlier turns sent to the model, 1 left out" in line, line
