"""Screenshots of the chat page for the README: docs/chat-desktop.png (1280 x 800) and
docs/chat-phone.png (390 x 844), with real answers of the default model on screen.

    .venv/bin/python docs/screenshot.py [--url http://127.0.0.1:8000/ --key KEY]

Without --url it starts a stack of its own (the one of tests/webui). Needs Debian's chromium
and chromium-driver, as the browser tests do."""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "webui"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from browser import Page, missing, start_chrome  # noqa: E402

QUESTIONS = ("Give three tips for writing clear emails, as a numbered list.",
             "Show a short Python function that reverses a string.")


def shoot(page: Page, path: pathlib.Path, width: int, height: int, mobile: bool) -> None:
    page.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    page.open()
    page.wait(lambda: page.all("#messages .msg.assistant .stats"), what="the conversation")
    page.js("const m = document.getElementById('messages'); m.scrollTop = m.scrollHeight;")
    page.d.save_screenshot(str(path))
    small(path)


def small(path: pathlib.Path) -> None:
    """The PNG as a 128-colour palette image (a flat page: a third of the size, same look)."""
    from PIL import Image
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running gateway's page (default: start a stack)")
    ap.add_argument("--key", default="", help="its API key")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    if missing():
        raise SystemExit(f"screenshot.py: {', '.join(missing())} missing (apt-get install chromium chromium-driver)")
    stack = None
    url, key = args.url, args.key
    if not url:
        from e2e_stack import Stack
        from page_stack import CONFIG, KEY
        stack = Stack(pathlib.Path(tempfile.mkdtemp(prefix="npuflow-shot-")), CONFIG).start()
        url, key = f"http://127.0.0.1:{stack.port}/", KEY
    driver = start_chrome(1280, 800)
    try:
        page = Page(driver, url)
        page.open()
        if key:
            page.enter_key(key)
        page.wait(lambda: page.model_options(), what="the models")
        page.set_settings(temperature=0, max_tokens=160)
        for q in QUESTIONS:
            page.send(q)
            page.wait(lambda: page.busy(), 5, "the answer to start")
            page.wait_answer_done(120)
        out = pathlib.Path(args.out)
        shoot(page, out / "chat-desktop.png", 1280, 800, mobile=False)
        shoot(page, out / "chat-phone.png", 390, 844, mobile=True)
        print("wrote", out / "chat-desktop.png", out / "chat-phone.png")
    finally:
        driver.quit()
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    main()
