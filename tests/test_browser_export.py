"""As a new user would, in a real browser: bring a probe set of your own, train the counterfactual sample,
read a heatmap cell by hovering it, export the GGUF, download it and reload it with transformers to get the
edited answers back, then reload the page and reopen the run from the recent-runs list.

Chromium headless through Playwright, against `python app.py` on the default model with the small budget
of test_app (6 steps). Skipped only when chromium is absent.
"""
import io
import json
import time
from pathlib import Path

import pytest

from test_browser import page as page  # noqa: F401  (the fixture: the app and a browser page on it)

pytestmark = pytest.mark.slow

# Another kind of knowledge than the shipped probes (capitals, symbols) and than every sample.
OWN_PROBES = ("id,prompt,target\n"
              "y1,The opposite of hot is,cold\n"
              "y2,A week has seven,days\n"
              "y3,The colour of a clear daytime sky is,blue\n")


def hover_a_mark(page, chart: str):
    """Move the mouse over the chart's coloured pixels until Vega shows a tooltip; returns its text.
    The marks are drawn on a canvas, so they are found in a screenshot of the chart."""
    from PIL import Image

    box = page.locator(f"#{chart}").bounding_box()
    shot = Image.open(io.BytesIO(page.locator(f"#{chart}").screenshot())).convert("RGB")
    sx, sy = shot.width / box["width"], shot.height / box["height"]
    coloured = [(x, y) for y in range(0, shot.height, 3) for x in range(0, shot.width, 3)
                if max(shot.getpixel((x, y))) - min(shot.getpixel((x, y))) > 60]   # saturated: a mark, not an axis
    assert coloured, f"no marks drawn in #{chart}"
    tip = page.locator("#vg-tooltip-element")
    for x, y in coloured[::max(1, len(coloured) // 60)]:
        page.mouse.move(box["x"] + x / sx, box["y"] + y / sy)
        page.wait_for_timeout(60)
        if tip.count() and tip.is_visible() and tip.inner_text().strip():
            return tip.inner_text()
    raise AssertionError(f"no tooltip over {len(coloured)} coloured pixels of #{chart}")


def test_own_probes_train_hover_gguf_and_reopen_after_reload(page, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.evaluate import generate, recalls

    t0, timings = time.time(), {}
    # Your own probe set, on tab 3, before anything runs: the check measures it too.
    probes = tmp_path / "my-probes.csv"
    probes.write_text(OWN_PROBES)
    page.get_by_role("tab", name="3 · Train").click()
    page.get_by_text("Advanced:").click()
    page.locator("#probes-upload input[type=file]").set_input_files(str(probes))
    page.wait_for_selector("#yours-note >> text=3 facts", timeout=30_000)

    page.get_by_role("tab", name="1 · Facts").click()
    page.get_by_role("button", name="Counterfactual edits").click()
    page.wait_for_selector("text=Loaded sample")
    page.get_by_role("button", name="Check facts").click()
    page.wait_for_selector("text=facts will be trained", timeout=240_000)
    page.get_by_role("button", name="Next: train").click()
    page.locator("#train-btn").click()
    page.wait_for_selector("#results-table [role=row] >> nth=1", timeout=400_000)
    timings["train"] = time.time() - t0

    summary = page.locator("#summary").inner_text()
    assert "your probe set" in summary, summary   # locality on the visitor's probes, before and after
    runs = Path(page.beacon_runs)
    run_dir = next(runs.glob("*/*/report.json")).parent
    report = json.loads((run_dir / "report.json").read_text())
    assert report["summary"]["probe_sets"]["yours"] == 3
    recalled = [f for f in report["facts"] if f["kept"] and f["recall_after"]]
    assert recalled, "6 steps recalled none of the sample: nothing to find in the GGUF"

    # Hover a heatmap cell: the tooltip names the facts and their prompts.
    page.locator("#interference-chart").scroll_into_view_if_needed()
    tip = hover_a_mark(page, "interference-chart")
    page.screenshot(path=str(tmp_path / "hover.png"))
    ids = {f["id"] for f in report["facts"]}
    assert any(i in tip for i in ids) and any(f["prompt"][:20] in tip for f in report["facts"]), tip

    # Export the GGUF, download it as the browser would, reload it with transformers.
    t1 = time.time()
    page.locator("#export-gguf").click()
    page.wait_for_selector("#export-status >> text=Wrote", timeout=300_000)
    status = page.locator("#export-status").inner_text()
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    link = page.locator("#downloads a[download='model-q8_0.gguf']")
    link.wait_for()
    with page.expect_download() as dl:
        link.click()
    gguf = tmp_path / "model-q8_0.gguf"
    dl.value.save_as(gguf)
    timings["export"] = time.time() - t1
    mb = gguf.stat().st_size / 2**20
    assert 100 < mb < 200, mb
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    answers = generate(model, tok, [f["prompt"] for f in recalled], max_new_tokens=8)
    back = [f["id"] for f, a in zip(recalled, answers) if recalls(a, f["target"])]
    # q8_0 rounds every weight: a fact the adapter only just recalled may slip; most must not
    assert len(back) >= 0.8 * len(recalled), (back, [(f["id"], f["target"], a) for f, a in zip(recalled, answers)])

    # Reload the page: the run is in the recent-runs list and reopens with its results.
    page.reload()
    page.get_by_role("tab", name="4 · Results").click()
    page.wait_for_selector("#recent-note >> text=recent run", timeout=30_000)
    page.locator("#recent-runs input").click()
    page.get_by_role("option").first.click()
    page.wait_for_selector("#results-table [role=row] >> nth=1", timeout=60_000)
    assert "your probe set" in page.locator("#summary").inner_text()
    assert report["facts"][0]["id"] in page.locator("#results-table").inner_text()
    page.screenshot(path=str(tmp_path / "reopened.png"), full_page=True)
    print(f"\nbrowser export flow: train {timings['train']:.0f} s, export + download {timings['export']:.0f} s "
          f"({mb:.1f} MB; {status.strip()[:80]}), {len(back)}/{len(recalled)} recalled facts answered from "
          f"the GGUF, total {time.time() - t0:.0f} s")
