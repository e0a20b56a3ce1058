"""app.py in a real browser: `streamlit run app.py` on a loopback port, Debian's Chromium (headless)
driven by Playwright. Waits are for elements, never timers. Screenshots go to tests/app/artifacts/.

Skipped (with the reason) only when /usr/bin/chromium or the playwright package is absent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from .conftest import APP, ARTIFACTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 120_000  # the first page load imports torch and loads the embedder on this 2-core machine

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed; "
                       "install it with `apt-get install chromium` (scripts/install.sh --dev does)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_root(runs_root, large_root, tmp_path_factory) -> Path:
    """A runs folder with the real small run (the default: first by name) and the 10k-document run."""
    root = tmp_path_factory.mktemp("browser_runs")
    (root / "a-small").symlink_to(runs_root / "small", target_is_directory=True)
    (root / "b-large").symlink_to(large_root / "large", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(browser_root, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.port", str(port),
             "--server.fileWatcherType", "none", "--", "--runs", str(browser_root)],
            cwd=APP.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not answer on {url} within 60 s:\n{log.read_text()}")
                time.sleep(0.2)  # polling the health endpoint until the server is up
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page_and_dialogs(server):
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(WAIT_MS)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        started = time.perf_counter()
        page.goto(server)
        visible_table(page).wait_for()
        print(f"\nbrowser, cold server: time to the first ranked table {time.perf_counter() - started:.2f} s")
        yield page, dialogs
        browser.close()


def visible_table(page):
    return page.locator('[data-testid="stDataFrame"] >> visible=true').first


def choose(page, label: str, option_text: str) -> None:
    """Pick the option containing ``option_text`` of a Streamlit selectbox (a combobox named by its label).

    The list is opened from the keyboard (focus + ArrowDown). A redraw of the page can close the list at
    any moment — before it shows, between reading its options and clicking one (CI once read an empty list
    right after the first option had shown) — so opening, reading and clicking are retried together (three
    attempts); what the last attempt saw is reported."""
    options = page.get_by_role("option")
    texts: list[str] = []
    for attempt in range(3):
        wait_idle(page)
        page.get_by_role("combobox", name=label, exact=True).focus()
        page.keyboard.press("ArrowDown")
        try:
            options.first.wait_for(timeout=10_000)
            texts = options.all_inner_texts()
            matching = [i for i, text in enumerate(texts) if option_text in text]
            if matching:
                options.nth(matching[0]).click(timeout=10_000)
                return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; retried, then reported below
            pass
        page.keyboard.press("Escape")  # close a list left open before trying again
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_failure.png"))
    raise AssertionError(f"{label}: no option contains {option_text!r} after 3 attempts; last options seen: {texts}")


def wait_idle(page) -> None:
    """Wait until the script run has finished (call after content of the new run has appeared): the app
    root reports its script state, and no element of the previous run is left stale."""
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-stale=\"true\"]'); }"
    )


def table_cell(page, text: str):
    return page.locator('[data-testid="stDataFrame"] td[role="gridcell"]', has_text=text).first


def document_heading(page, doc_id: str):
    return page.locator("h4", has_text=f"Training document {doc_id} (")


def test_pick_a_target_and_open_the_evidence_panel(page_and_dialogs, runs_root):
    page, dialogs = page_and_dialogs
    values = pd.read_parquet(runs_root / "small" / "values.parquet")
    top = values[(values["target_id"] == "bread") & (values["rank"] == 1)]["doc_id"].iat[0]

    choose(page, "Target", "bread — ")
    page.locator("h4", has_text="Output (target bread)").wait_for()  # the evidence panel of this target
    wait_idle(page)
    choose(page, "Training document", f"#1 · {top} ·")
    heading = document_heading(page, top)
    heading.wait_for()
    wait_idle(page)
    assert heading.is_visible()
    assert top in page.locator('[data-testid="stMain"]').inner_text()
    table_cell(page, top).wait_for(state="attached")  # and in the ranked table
    ARTIFACTS.mkdir(exist_ok=True)
    for name, anchor in (("browser_top.png", page.get_by_role("heading", name="Run", exact=True)),
                         ("browser_ranked_table.png", page.locator("h2", has_text="Ranked training documents")),
                         ("browser_evidence_panel.png", page.get_by_role("heading", name="Evidence", exact=True))):
        anchor.evaluate("element => element.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(ARTIFACTS / name))
    assert not dialogs


def test_markup_in_a_document_renders_as_literal_text(page_and_dialogs):
    page, dialogs = page_and_dialogs
    choose(page, "Target", "genesis — ")
    page.locator("h4", has_text="Output (target genesis)").wait_for()
    wait_idle(page)
    choose(page, "Training document", "notes/markup.txt")
    document_heading(page, "notes/markup.txt").wait_for()
    block = page.locator(".untrusted-text", has_text="alert(1)").first
    block.wait_for()
    wait_idle(page)
    shown = block.inner_text()
    for literal in ("<script>alert(1)</script>", "**bold words**", "# not a heading",
                    "[click me](javascript:alert(2))", "<img src=x onerror=alert(3)>", "<b>bold tag</b>"):
        assert literal in shown, f"{literal!r} is not shown literally"
    main = page.locator('[data-testid="stMain"]')
    markup = ".untrusted-text script, .untrusted-text img, .untrusted-text b, .untrusted-text a"
    assert main.locator(markup).count() == 0
    assert page.locator('img[src="x"]').count() == 0
    assert not page.evaluate(
        "() => [...document.querySelectorAll('script')].some(s => s.textContent.includes('alert('))")
    document_heading(page, "notes/markup.txt").evaluate("element => element.scrollIntoView({block: 'start'})")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_markup_document.png"))
    assert not dialogs, f"a dialog opened: {dialogs}"


def test_new_text_with_approximate_values_from_sketches(page_and_dialogs):
    page, dialogs = page_and_dialogs
    wait_idle(page)
    page.get_by_text("A new output text", exact=True).click()
    page.get_by_text("Approximate values from sketches", exact=True).click()
    box = page.get_by_role("textbox", name="Output text")
    box.fill("At the very start God made the heavens and the earth, and the earth had no shape.")
    box.press("Control+Enter")
    warning = page.get_by_text("APPROXIMATE values: estimated in seconds", exact=False).first
    warning.wait_for()
    visible_table(page).wait_for()
    wait_idle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("h2", has_text="Ranked training documents").evaluate(
        "element => element.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(ARTIFACTS / "browser_approximate_values.png"))
    page.get_by_text("A registered target", exact=False).first.click()  # back to the target mode
    wait_idle(page)
    assert not dialogs, f"a dialog opened: {dialogs}"


def test_first_load_of_the_10k_document_run_in_the_browser(page_and_dialogs, large_root):
    page, dialogs = page_and_dialogs
    values = pd.read_parquet(large_root / "large" / "values.parquet")
    top = values[(values["target_id"] == "target-00") & (values["rank"] == 1)]["doc_id"].iat[0]
    wait_idle(page)
    started = time.perf_counter()
    choose(page, "Run", "b-large")
    # the grid draws on a canvas; its cells are mirrored in an (invisible) accessible table
    table_cell(page, top).wait_for(state="attached")
    seconds = time.perf_counter() - started
    print(f"\nbrowser, warm server: first load of the 10,000-document run (pick -> top document in the "
          f"table) {seconds:.2f} s")
    page.get_by_text(re.compile(r"^20 of 20 ranked documents shown$")).wait_for()
    assert not dialogs
