"""`xdm-bridge sandbox` as a newcomer uses it: the real command, its page in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash .ci/run`` installs them). Without
them this test fails and says so: it is never skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0


class SandboxProcess:
    def __init__(self, process: subprocess.Popen[bytes], url: str, out: Path, err: Path) -> None:
        self.process, self.url, self.out, self.err = process, url, out, err

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """``xdm-bridge sandbox --port <free> --no-open``, started the way a person starts it."""
    port = free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [str(Path(sys.executable).with_name("xdm-bridge")), "sandbox", "--port", str(port), "--no-open"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    running = SandboxProcess(process, f"http://127.0.0.1:{port}/", out, err)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"xdm-bridge sandbox exited with {process.returncode}:\n{running.output()}")
            try:
                with urllib.request.urlopen(running.url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the sandbox page never answered:\n{running.output()}")
                time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:  # the test failed early: stop it as Ctrl-C would, so it cleans up
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: this browser test needs Debian's chromium and "
            "chromium-driver. `bash .ci/run` installs them (apt-get install chromium chromium-driver)."
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def type_in(driver: WebDriver, box: str, text: str) -> None:
    """Type ``text`` in a composer and press Enter; each newline is typed as Shift+Enter."""
    field = driver.find_element(By.CSS_SELECTOR, box)
    field.clear()
    first, *more = text.split("\n")
    field.send_keys(first)
    for line in more:
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        field.send_keys(line)
    field.send_keys(Keys.ENTER)


def connect_through_the_pages(driver: WebDriver, tmp_path: Path) -> None:
    """/xdm connect; its button opens the bridge's connect page in a new tab: Continue to X, the
    simulated X's consent, the bridge's callback page; then back to Slack to Confirm."""
    type_in(driver, "#slack-input", "/xdm connect")
    sandbox_tab = driver.current_window_handle
    wait_for(driver, ".authorize-button", "Connect your X account", click=True)
    WebDriverWait(driver, WAIT).until(lambda d: len(d.window_handles) == 2)
    [connect_tab] = [h for h in driver.window_handles if h != sandbox_tab]
    driver.switch_to.window(connect_tab)
    page = wait_for(driver, "body", "Continue to X", "the bridge's connect page")
    assert "Slack user you (U0SANDBOX)" in page.text and "Connect an X account" in driver.title
    assert driver.save_screenshot(str(tmp_path / "connect-page.png"))
    wait_for(driver, "button[type=submit]", "Continue to X", click=True)
    wait_for(driver, "#approve", "Authorize app", "the simulated X consent page", click=True)
    wait_for(driver, "h1", "Confirm in Slack", "the bridge's callback page")
    assert driver.save_screenshot(str(tmp_path / "connect-callback.png"))
    driver.close()
    driver.switch_to.window(sandbox_tab)
    wait_for(driver, "#slack-messages .slack-button", "Connect @you", "the Confirm button", click=True)
    wait_for(driver, "#slack-messages .msg.bot", "Connected X account @you", "the connect follow-up")


def own_message(driver: WebDriver, text: str) -> WebElement:
    return wait_for(driver, "#slack-messages .msg.message[data-ts]", text, f"your message {text!r}")


def block_with(driver: WebDriver, css: str, *texts: str) -> None:
    """Wait for one element matching ``css`` that shows every one of ``texts``; the Home is
    published again as things change, so an element read a moment ago may be gone."""

    def found(d: WebDriver) -> bool:
        return any(all(t in e.text for t in texts) for e in d.find_elements(By.CSS_SELECTOR, css))

    try:
        WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(found)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"never saw {css} showing {texts}; the page shows:\n{page}") from None


def act_on(driver: WebDriver, text: str, action: str) -> None:
    """Click ``action`` (edit, delete, thread) on your message containing ``text``; the pane may
    be rebuilt between finding the message and the click, so both are tried again together."""

    def clicked(d: WebDriver) -> bool:
        own_message(d, text).find_element(By.CSS_SELECTOR, f'[data-action="{action}"]').click()
        return True

    WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(clicked)


def fill_in(driver: WebDriver, element_id: str, text: str) -> None:
    """Type ``text`` into the field ``element_id`` of a pane that may be rebuilt meanwhile (the
    bridge updates an open form as its lookups answer): tried again until the field holds it."""

    def filled(d: WebDriver) -> bool:
        field = d.find_element(By.ID, element_id)
        if text not in (field.get_attribute("value") or ""):
            field.clear()  # what a rebuilt pane kept of an earlier try
            field.send_keys(text)
        return text in (d.find_element(By.ID, element_id).get_attribute("value") or "")

    WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(filled)


def wait_for(
    driver: WebDriver, css: str, text: str = "", what: str = "", *, click: bool = False
) -> WebElement:
    """The first element matching ``css`` whose text contains ``text`` (clicked, if asked).

    The page rebuilds a pane when its state changes, so an element found a moment ago may be
    gone: the search simply runs again.
    """

    def found(d: WebDriver) -> WebElement | Literal[False]:
        for element in d.find_elements(By.CSS_SELECTOR, css):
            if text in element.text:
                if click:
                    element.click()
                return element
        return False

    wait: WebDriverWait[WebDriver] = WebDriverWait(
        driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        element = wait.until(found)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"never saw {what or css + ' ' + repr(text)}; the page shows:\n{page}") from None
    return element


def test_a_channel_message_reaches_x_and_gets_its_check_mark(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(sandbox.url)
    assert "Simulation — nothing leaves this machine" in browser.find_element(By.ID, "banner").text

    connect_through_the_pages(browser, tmp_path)

    type_in(browser, "#slack-input", "/xdm new-group @alice @bob hi")
    wait_for(browser, "#x-conversations .tab.selected", "Group with @alice, @bob", "the group on the X side")
    wait_for(browser, "#x-messages .x-message.mine .bubble", "hi")
    wait_for(browser, "#slack-messages .msg.bot", "bridged this channel to a new X group")

    type_in(browser, "#slack-input", "Hello from the browser")
    wait_for(browser, "#x-messages .x-message.mine .bubble", "You: Hello from the browser", "the relayed DM")
    check = wait_for(
        browser, '.msg.message[data-ts] .reaction[data-name="white_check_mark"]', "✅", "the ✅ reaction"
    )
    assert check.text.startswith("✅")
    [message] = [
        m
        for m in browser.find_elements(By.CSS_SELECTOR, "#slack-messages .msg.message")
        if "Hello from" in m.text
    ]
    assert "✅" in message.text and re.fullmatch(r"\d+\.\d{6}", message.get_attribute("data-ts") or "")

    # A 220-character address wraps in both panes instead of widening the page.
    long_url = "https://example.com/" + "a" * 200
    type_in(browser, "#slack-input", f"read @Ada {long_url}")
    wait_for(browser, "#x-messages .x-message.mine .bubble", long_url, "the long DM")
    link = wait_for(browser, "#slack-messages .msg.message a", long_url, "the link in Slack")
    assert link.get_attribute("href") == long_url
    wait_for(browser, "#slack-messages .msg.message", "read @Ada", "the mention in Slack")
    widths = browser.execute_script(
        "const x = document.getElementById('x').getBoundingClientRect();"
        "return [document.documentElement.scrollWidth, window.innerWidth, x.right];"
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[1], widths

    # Alice answers on X; it shows there, and the bridge posts it in the channel as Alice.
    type_in(browser, "#x-input", "Hi, from X")
    reply = wait_for(browser, '#x-messages .x-message[data-sender="alice"]', "Hi, from X", "Alice's reply")
    assert "posts it in Slack" in reply.text
    relayed = wait_for(browser, "#slack-messages .msg.bot", "Hi, from X", "Alice's reply in the Slack pane")
    assert "Alice (@alice)" in relayed.text
    assert all(
        step.get_attribute("class") == "step done" for step in browser.find_elements(By.CSS_SELECTOR, ".step")
    )

    screenshot = tmp_path / "sandbox.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # Ctrl-C stops everything: the bridge's cleanup runs and the temporary data is deleted.
    data = re.search(r"data\s+(\S+)", sandbox.out.read_text())
    assert data and Path(data.group(1)).is_dir()
    sandbox.process.send_signal(signal.SIGINT)
    assert sandbox.process.wait(timeout=15) == 0, sandbox.output()
    assert "shut down cleanly" in sandbox.err.read_text()
    assert not Path(data.group(1)).exists()


def test_on_a_phone_the_panes_stack_and_each_stays_usable(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    """420 px wide: the Slack pane above the X pane, each message list tall enough to read, and
    nothing wider than the screen. The screenshots are kept beside the test's files."""
    browser.set_window_size(420, 860)
    browser.get(sandbox.url)
    type_in(browser, "#slack-input", "/xdm help")
    wait_for(browser, "#slack-messages .msg", "/xdm", "the help answer")
    boxes = browser.execute_script(
        "const box = id => document.getElementById(id).getBoundingClientRect();"
        "return {slack: box('slack'), x: box('x'), slackList: box('slack-messages'),"
        " xList: box('x-messages'), page: document.documentElement.scrollWidth, view: window.innerWidth};"
    )
    slack, x = boxes["slack"], boxes["x"]
    assert x["top"] >= slack["bottom"] - 1 and abs(x["left"] - slack["left"]) < 1, boxes  # stacked
    assert boxes["page"] <= boxes["view"], boxes  # no sideways scrolling
    for name in ("slackList", "xList"):
        assert boxes[name]["height"] >= 200 and boxes[name]["width"] >= 300, (name, boxes)
    # Each composer keeps its box and its Send button on one line, within the screen.
    composers = browser.execute_script(
        "return ['slack-form', 'x-form'].map(id => { const f = document.getElementById(id);"
        " const box = f.querySelector('textarea').getBoundingClientRect();"
        " const send = f.querySelector('button[type=submit]').getBoundingClientRect();"
        " return {box: box, send: send}; });"
    )
    for composer in composers:
        box, send = composer["box"], composer["send"]
        assert send["right"] <= boxes["view"] and send["left"] >= box["right"], composer
        assert box["width"] >= 150 and abs(send["bottom"] - box["bottom"]) < 2, composer
    for where in ("top", "x-pane"):
        if where == "x-pane":
            browser.execute_script("document.getElementById('x').scrollIntoView()")
        shot = tmp_path / f"sandbox-420px-{where}.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5_000


PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


def loaded(driver: WebDriver, image: WebElement) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))


def test_edits_deletions_files_threads_and_lines_show_on_both_sides(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(sandbox.url)
    connect_through_the_pages(browser, tmp_path)
    type_in(browser, "#slack-input", "/xdm new-group @alice @bob hi")
    wait_for(browser, "#x-conversations .tab.selected", "Group with @alice, @bob", "the group on the X side")

    # Several lines: Shift+Enter starts a line, Enter sends; X gets the lines as typed.
    type_in(browser, "#slack-input", "line one\nline two")
    bubble = wait_for(browser, "#x-messages .x-message.mine .bubble", "line two", "the two-line DM")
    assert bubble.text == "You: line one\nline two"
    assert (
        own_message(browser, "line one").find_element(By.CSS_SELECTOR, ".text").text == "line one\nline two"
    )

    # Edit: the bridge gets message_changed and X gets the correction.
    type_in(browser, "#slack-input", "the meeting is at 3")
    wait_for(browser, "#x-messages .x-message.mine .bubble", "meeting is at 3", "the DM to edit")
    act_on(browser, "meeting is at 3", "edit")
    wait_for(browser, "#slack-context", "Editing your message")
    assert browser.find_element(By.ID, "slack-input").get_attribute("value") == "the meeting is at 3"
    type_in(browser, "#slack-input", "the meeting is at 4")
    wait_for(
        browser, "#x-messages .x-message.mine .bubble", "You (edited): the meeting is at 4", "the correction"
    )
    assert "(edited)" in own_message(browser, "meeting is at 4").text

    # Delete: message_deleted; X deletes both copies and the page shows them as deleted.
    act_on(browser, "meeting is at 4", "delete")
    wait_for(browser, "#slack-messages .msg.deleted", "This message was deleted", "the deletion in Slack")
    WebDriverWait(browser, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#x-messages .x-message.deleted")) == 2
    )
    assert all(
        "This message was deleted" in m.text
        for m in browser.find_elements(By.CSS_SELECTOR, ".x-message.deleted")
    )

    # A thread reply: shown in its thread, and X gets it with a quote of the parent.
    act_on(browser, "line one", "thread")
    wait_for(browser, "#slack-context", "Replying in the thread of")
    type_in(browser, "#slack-input", "a reply in the thread")
    # Read within the wait: the panes are rebuilt as the bridge answers.
    block_with(
        browser, "#slack-messages .msg.in-thread", "a reply in the thread", "in the thread of “line one"
    )
    block_with(browser, "#x-messages .x-message.mine .bubble", "a reply in the thread", "line one")

    # A file: the sample picture goes to X as an image; Slack shows it too.
    browser.find_element(By.ID, "slack-sample").click()
    wait_for(browser, "#slack-attachment", "sample.png")
    type_in(browser, "#slack-input", "a picture")
    image = wait_for(browser, "#x-messages .x-message.mine .media img", what="the picture on X")
    WebDriverWait(browser, WAIT).until(lambda d: loaded(d, image))
    chip = wait_for(browser, "#slack-messages .msg.message .file", "sample.png", "the file in Slack")
    assert loaded(browser, chip.find_element(By.TAG_NAME, "img"))

    # Alice sends two lines and a photo on X: both reach the channel.
    photo = tmp_path / "alice.png"
    photo.write_bytes(PNG)
    browser.find_element(By.ID, "x-photo").send_keys(str(photo))
    wait_for(browser, "#x-attachment", "alice.png")
    type_in(browser, "#x-input", "look\nhere")
    sent = wait_for(browser, '#x-messages .x-message[data-sender="alice"]', "look", "Alice's DM on X")
    assert sent.find_element(By.CSS_SELECTOR, ".bubble").text == "look\nhere"
    assert sent.find_elements(By.CSS_SELECTOR, ".media img")
    relayed = wait_for(browser, "#slack-messages .msg.bot", "look\nhere", "Alice's lines in Slack")
    assert "Alice (@alice)" in relayed.text
    shared = wait_for(browser, "#slack-messages .msg.bot .file", "", "Alice's photo in Slack")
    WebDriverWait(browser, WAIT).until(lambda d: loaded(d, shared.find_element(By.TAG_NAME, "img")))

    widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert widths[0] <= widths[1], widths
    screenshot = tmp_path / "sandbox-everything.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


def test_the_home_tab_shows_your_x_account_and_bridged_channels(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(sandbox.url)
    wait_for(browser, "#home-tab", "Home", click=True)
    wait_for(browser, "#slack-home .home-block", "Not connected", "the Home of someone not connected")
    # Its Connect button opens a modal with the bridge's connect link (a link of its own, once).
    wait_for(browser, '#slack-home .slack-button[data-action="xdm_home_connect"]', "Connect", click=True)
    link = wait_for(browser, "#slack-modal .authorize-button", "Connect your X account", "the modal's link")
    assert "/x/connect?state=" in (link.get_attribute("href") or "")
    wait_for(browser, "#modal-close", "Close", click=True)
    WebDriverWait(browser, WAIT).until(lambda d: not d.find_element(By.ID, "slack-modal").is_displayed())

    wait_for(browser, "#channel-tab", "sandbox", click=True)
    connect_through_the_pages(browser, tmp_path)
    type_in(browser, "#slack-input", "/xdm new-group @alice @bob hi")
    wait_for(browser, "#slack-messages .msg.bot", "bridged this channel to a new X group")

    wait_for(browser, "#home-tab", "Home", click=True)
    block_with(browser, "#slack-home .home-block", "@you", "Your X account")
    wait_for(browser, "#slack-home .slack-button", "Disconnect", "the Disconnect button")
    wait_for(browser, "#slack-home .slack-button", "Reconnect", "the Reconnect button")
    block_with(browser, "#slack-home .home-block", "#sandbox", "last activity")
    assert browser.save_screenshot(str(tmp_path / "home.png"))

    # A typed /xdm unlink asks in the channel first; its Confirm button unlinks.
    wait_for(browser, "#channel-tab", "sandbox", click=True)
    type_in(browser, "#slack-input", "/xdm unlink")
    wait_for(browser, "#slack-messages .msg.only-you", "Stop bridging", "the unlink question")
    assert browser.save_screenshot(str(tmp_path / "unlink-question.png"))
    wait_for(browser, "#slack-messages .slack-button", "Confirm: Unlink", "the Confirm button", click=True)
    wait_for(browser, "#slack-messages .msg.bot", "stopped bridging", "the unlink announced")


def test_an_encrypted_conversation_both_ways_and_the_warning_for_a_peer_on_x_chat(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(sandbox.url)
    connect_through_the_pages(browser, tmp_path)
    # The operator's step, run by the sandbox once @you is connected.
    wait_for(browser, "#slack-messages .msg.note", "xdm-bridge xchat setup @you", "the keys made")
    wait_for(browser, "#x-keys", "held by the bridge", "the keys on the X side")
    assert "@alice 🔒" in browser.find_element(By.ID, "x-people").text
    assert "@bob 🔒" not in browser.find_element(By.ID, "x-people").text

    type_in(browser, "#slack-input", "/xdm dm @alice")
    wait_for(browser, "#slack-messages .msg.bot", "This is an encrypted X Chat conversation", "the lock")
    tab = wait_for(browser, '#x-conversations .tab.selected[data-encrypted="true"]', "DM with @alice")
    assert tab.text.startswith("🔒")
    wait_for(browser, "#x-lock", "Encrypted X Chat", "the mark on the X side")

    type_in(browser, "#slack-input", "the plans are in the safe")
    mine = wait_for(browser, "#x-messages .x-message.mine", "the plans are in the safe", "the decrypted DM")
    assert "You: the plans are in the safe" in mine.text and "signature verified" in mine.text
    wait_for(browser, '.msg.message[data-ts] .reaction[data-name="white_check_mark"]', "✅", "the ✅")

    type_in(browser, "#x-input", "Got it, from my phone")
    wait_for(browser, '#x-messages .x-message[data-sender="alice"]', "signature verified", "Alice's message")
    relayed = wait_for(browser, "#slack-messages .msg.bot", "Got it, from my phone", "Alice's reply in Slack")
    assert "Alice (@alice)" in relayed.text
    assert browser.save_screenshot(str(tmp_path / "sandbox-x-chat.png"))

    # Without keys at the bridge, a DM with Carol (on X Chat) is one-way, and the channel is told.
    type_in(browser, "#slack-input", "/xdm unlink")
    wait_for(browser, "#slack-messages .slack-button", "Confirm: Unlink", "the Confirm button", click=True)
    wait_for(browser, "#slack-messages .msg.bot", "stopped bridging", "the unlink")
    wait_for(browser, "#x-forget", "Forget", click=True)
    wait_for(browser, "#x-keys", "forgotten", "the keys forgotten")
    type_in(browser, "#slack-input", "/xdm dm @carol")
    warning = wait_for(browser, "#slack-messages .msg.bot", "@carol uses X's encrypted Chat", "the warning")
    assert "may never appear here" in warning.text and "Only visible to you" not in warning.text
    assert browser.save_screenshot(str(tmp_path / "sandbox-x-chat-warning.png"))


def test_xdm_alone_opens_the_form_and_submitting_it_bridges_the_channel_on_a_phone(
    sandbox: SandboxProcess, browser: WebDriver, tmp_path: Path
) -> None:
    browser.set_window_size(420, 860)
    browser.get(sandbox.url)
    connect_through_the_pages(browser, tmp_path)
    type_in(browser, "#slack-input", "/xdm")
    wait_for(browser, "#slack-modal h2", "Bridge to X", "the /xdm form")
    wait_for(browser, "#modal-submit", "Bridge", "the form's submit button")

    fill_in(browser, "modal-people", "bob")
    wait_for(browser, "#modal-options .modal-option", "@bob", "Bob found at X", click=True)
    wait_for(browser, "#modal-picked .modal-chip", "@bob", "Bob picked")
    fill_in(browser, "modal-message", "Hi Bob, from the form")
    dialog = browser.execute_script(
        "const r = document.querySelector('#slack-modal .dialog').getBoundingClientRect();"
        "return {left: r.left, right: r.right, view: window.innerWidth};"
    )
    assert dialog["left"] >= 0 and dialog["right"] <= dialog["view"], dialog  # fits the phone
    assert browser.save_screenshot(str(tmp_path / "sandbox-form-420px.png"))
    browser.find_element(By.ID, "modal-submit").click()

    wait_for(browser, "#modal-body", "bridged this channel", "the outcome in the form")
    wait_for(browser, "#modal-close", "Close", click=True)
    WebDriverWait(browser, WAIT).until(lambda d: not d.find_element(By.ID, "slack-modal").is_displayed())
    wait_for(
        browser, "#slack-messages .msg.bot", "bridged this channel to their DMs with @bob", "the channel"
    )
    tab = wait_for(browser, '#x-conversations .tab[data-encrypted="false"]', "DM with @bob", "a legacy DM")
    assert not tab.text.startswith("🔒")
    wait_for(browser, "#x-messages .x-message.mine .bubble", "Hi Bob, from the form", "the opening message")
    widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert widths[0] <= widths[1], widths
