"""The chat page in a real browser: one stack (the default model, with an API key) and one
headless Chromium for all the tests of this folder.

Without Debian's chromium and chromium-driver the tests are left out, and the summary says so
in a line of its own; with NPUFLOW_REQUIRE_BROWSER=1 (CI) they fail instead."""
import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))   # e2e_stack

from browser import CHROMEDRIVER, CHROMIUM, Page, missing, start_chrome  # noqa: E402
from e2e_stack import Stack  # noqa: E402
from page_stack import CONFIG  # noqa: E402

_left_out: list[str] = []


def _required() -> bool:
    return os.environ.get("NPUFLOW_REQUIRE_BROWSER", "") not in ("", "0")


@pytest.hookimpl(trylast=True)   # after -m / -k deselection: only the tests that would run
def pytest_collection_modifyitems(config, items):
    absent = missing()
    mine = [i for i in items if HERE in i.path.parents]
    if absent and not _required() and mine:
        reason = f"browser tests left out: no {' and no '.join(absent)} (Debian: apt-get install chromium chromium-driver)"
        _left_out[:] = [reason, str(len(mine))]
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if _left_out:
        reason, count = _left_out
        terminalreporter.write_line(f"{reason}: {count} tests not run", yellow=True, bold=True)


@pytest.fixture(scope="session")
def chrome():
    absent = missing()
    if absent:
        pytest.fail(f"NPUFLOW_REQUIRE_BROWSER is set but {', '.join(absent)} is missing "
                    f"(expected {CHROMIUM} and {CHROMEDRIVER})")
    driver = start_chrome(1280, 800)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def webui_stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("webui"), CONFIG).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def page(chrome, webui_stack):
    return Page(chrome, f"http://127.0.0.1:{webui_stack.port}/")
