"""The app in a real browser: Playwright drives Debian's chromium (headless) through the whole flow.

Load a sample, check it, re-include a dropped fact, train a few steps, and find the before/after
table, the plots and the downloads on the page. Skipped only when chromium is absent.
"""
import shutil
import time
from pathlib import Path

import pytest

from test_app import SMALL, start_app, stop_app

pytestmark = pytest.mark.slow  # starts the app server and a browser, and trains

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture()
def page(tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    runs.mkdir()
    proc, url = start_app(runs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.beacon_runs = runs   # the run folders, for tests that read what a run wrote
        pg.goto(url)
        try:
            yield pg
        finally:
            pg.screenshot(path=str(tmp_path / "last.png"), full_page=True)  # for a failing run's post-mortem
            browser.close()
            stop_app(proc)


def test_sample_check_train_and_results_in_the_browser(page):
    t0 = time.time()
    page.get_by_role("button", name="Conflicts & duplicates").click()
    page.wait_for_selector("text=Loaded sample")
    assert page.locator("#facts-table [role=row]").count() > 5

    page.get_by_role("button", name="Check facts").click()
    page.wait_for_selector("text=facts will be trained", timeout=180_000)  # moves to 2 · Review by itself
    assert page.get_by_text("✗ conflict: with c02").first.is_visible()

    # Re-include c01 (first row) by ticking its keep box.
    page.locator("#review-table [data-testid='cell-0-0'] input[type=checkbox]").click()
    page.wait_for_selector("text=✓ kept by you")

    page.get_by_role("button", name="Next: train").click()
    # Advanced: a custom layer list outside the model is refused with a message naming it, nothing runs
    page.get_by_text("Advanced:").click()
    page.get_by_label("custom list").check()
    page.locator("#layers-custom textarea, #layers-custom input").first.fill("20-35")
    page.locator("#train-btn").click()
    page.wait_for_selector("text=indices in 0..29, got '20-35'", timeout=30_000)
    status = page.locator("#train-status").inner_text()
    assert "Trains on the facts table" in status and "▶" not in status  # nothing started
    page.get_by_label("all layers").check()
    page.locator("#layers-custom").wait_for(state="hidden")
    page.locator("#train-btn").click()
    page.wait_for_selector("#train-status >> text=▶", timeout=60_000)  # live stage checklist
    page.wait_for_selector("#results-table [role=row] >> nth=1", timeout=300_000)  # moves to 4 · Results

    summary = page.locator("#summary").inner_text()
    assert "Recall" in summary and "Locality" in summary and "cpu" in summary
    table = page.locator("#results-table").inner_text()
    for fid in ("c01", "c07", "c09", "c10"):
        assert fid in table
    assert "✓" in table or "✗" in table
    # coloured rows: at least one trained fact in green or red
    styles = page.locator("#results-table [role=gridcell]").evaluate_all(
        "cells => cells.map(c => getComputedStyle(c).backgroundColor)")
    assert {"rgb(211, 240, 220)", "rgb(249, 214, 218)"} & set(styles)
    plots = page.locator("#plots img")
    assert plots.count() >= 4
    page.locator("#downloads a[download='adapter.zip']").wait_for()

    page.locator("#ask-btn").click()
    page.wait_for_function("() => document.querySelector('#ask-tuned textarea').value.length > 0", timeout=120_000)
    print(f"browser flow: {time.time() - t0:.0f} s")
