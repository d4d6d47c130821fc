"""Headless Chromium for the chat page's tests and docs/screenshot.py: Debian's chromium and
chromium-driver, driven by selenium with both paths given (selenium-manager never runs, nothing
is downloaded), and helpers that act on the page as a user does."""
from __future__ import annotations

import os
import time

CHROMIUM = os.environ.get("NPUFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NPUFLOW_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing() -> list[str]:
    """The browser's executables that are not installed (empty: the tests can run)."""
    return [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]


def start_chrome(width: int = 1280, height: int = 800, mobile: bool = False, scale: float = 1.0):
    """A headless Chromium window of that size; `mobile` emulates a phone's viewport (touch,
    device scale `scale`)."""
    os.environ.setdefault("SE_OFFLINE", "true")       # in case selenium-manager is ever reached
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                "--hide-scrollbars", "--mute-audio", f"--window-size={width},{height}",
                f"--force-device-scale-factor={scale}", "--lang=en-US"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # no password manager: the key dialog's password field is not a login to remember
    opts.add_experimental_option("prefs", {"credentials_enable_service": False,
                                           "profile.password_manager_enabled": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    if mobile:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": scale, "mobile": True})
        driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    driver.set_script_timeout(30)
    return driver


class Page:
    """The chat page in a driver: what a user does (type, send, stop, pick) and sees."""

    def __init__(self, driver, url: str):
        self.d = driver
        self.url = url

    def open(self) -> None:
        self.d.get(self.url)
        self.wait(lambda: self.js("return document.readyState") == "complete")

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def wait(self, cond, timeout: float = 20.0, what: str = "condition"):
        end = time.monotonic() + timeout
        while True:
            try:
                got = cond()
            except Exception:   # an element not there yet, or replaced while read
                got = None
            if got:
                return got
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def visible(self, selector: str) -> bool:
        els = self.all(selector)
        return bool(els) and els[0].is_displayed()

    def enter_key(self, key: str) -> None:
        self.wait(lambda: self.visible("#key-dialog"), what="the key dialog")
        box = self.css("#key-input")
        box.clear()
        box.send_keys(key)
        self.css("#key-save").click()

    def model_options(self) -> list[str]:
        return [o.text for o in self.all("#model option")]

    def set_settings(self, **values) -> None:
        """Open Settings, fill the named fields (system, temperature, top_p, max_tokens, key), save."""
        self.css("#open-settings").click()
        self.wait(lambda: self.visible("#settings"), what="the settings dialog")
        for field, value in values.items():
            box = self.css("#" + {"key": "settings-key"}.get(field, field))
            box.clear()
            if value != "":
                box.send_keys(str(value))
        self.css("#settings-save").click()
        self.wait(lambda: not self.visible("#settings"), what="the settings dialog to close")

    def new_chat(self) -> None:
        self.css("#new-chat").click()

    def send(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys
        box = self.css("#input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)

    def answers(self):
        return self.all("#messages .msg.assistant")

    def last_answer_text(self) -> str:
        return self.js("const a = document.querySelectorAll('#messages .msg.assistant .content');"
                       "return a.length ? a[a.length - 1].textContent : '';")

    def busy(self) -> bool:
        return self.js("return document.body.classList.contains('busy')")

    def wait_answer_done(self, timeout: float = 60.0) -> None:
        self.wait(lambda: self.answers() and not self.busy(), timeout, "the answer to end")

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.d.get_log("browser") if e["level"] == "SEVERE"]
