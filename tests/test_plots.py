"""Tests for beacon/report/plots.py: the files draw_all writes, that they are real images, that degenerate
reports are skipped without errors, and that the colours actually say learned vs not learned."""
import logging

import matplotlib.image as mpimg
import numpy as np
import pytest

from beacon.report import plots
from beacon.report.plots import draw_all

ALL = ["interference.png", "distance_vs_learned.png", "drift.png", "recall.png", "learning_curves.png"]


def synthetic_report(n=12, steps=15, learned=None, layers=False, seed=0):
    """A report shaped like pipeline.run's. learned: None = random mix, True/False = every fact."""
    rng = np.random.default_rng(seed)
    ids = [f"inv{i + 1:02d}" for i in range(n)]
    recall = rng.random(n) < 0.7 if learned is None else np.full(n, learned)
    facts = []
    for i, fid in enumerate(ids):
        dist = float(rng.uniform(0.3, 1.0))
        drift = float(rng.normal(-0.2, 0.15))
        lp_b = float(rng.uniform(-30, -5))
        facts.append({"id": fid, "prompt": f"prompt {i}", "target": f"target {i}", "kept": True, "reason": None,
                      "category": "new", "semantic_distance": dist, "distance_after": dist + drift,
                      "drift": drift, "weight": 1.0, "recall_before": False, "recall_after": bool(recall[i]),
                      "logprob_before": lp_b,
                      "logprob_after": float(rng.uniform(-1, 0) if recall[i] else lp_b + rng.uniform(0, 6))})
    # A dropped fact, measured like the rest (as the pipeline does): the plots show kept facts only.
    facts.append({"id": "dup01", "kept": False, "reason": "conflict: x", "semantic_distance": 0.5,
                  "drift": 0.0, "recall_before": False, "recall_after": False,
                  "logprob_before": -10.0, "logprob_after": -9.0})

    g = rng.normal(size=(n, 8))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    history = [] if n == 0 else [{"step": s, "loss": 6.0 * np.exp(-s / 4), "task": 6.0 * np.exp(-s / 4), "guard": 0.01,
                "recall": min(1.0, s / steps), "seconds": 1.5} for s in range(1, steps + 1)]
    curves = {fid: [float(6 * np.exp(-s / rng.uniform(2, 6)) + 0.01) for s in range(steps)] for fid in ids}
    traj = {f["id"]: [[s, round(f["semantic_distance"] + f["drift"] * s / steps, 4)] for s in range(steps + 1)]
            for f in facts[:n]}
    report = {
        "summary": {"recall_before": 0.0, "recall_after": float(recall.mean()) if n else None, "locality_before": 1.0,
                    "locality_after": 0.95, "model": "tiny", "quantization": "none", "device": "cpu", "steps": steps},
        "facts": facts,
        "training": {"history": history, "fact_curves": curves, "distance_trajectories": traj},
        "interference": {"ids": ids, "cosine": cos.round(4).tolist(), "step_effect": (1e-3 * cos).tolist(),
                         "order": rng.permutation(n).tolist()} if n >= 2 else None,
    }
    if layers:
        L = 16
        report["layers"] = {"observed": rng.uniform(2, 8, L).tolist(), "ideal": np.linspace(8, 2, L).tolist(),
                            "deviation": rng.normal(0, 1, L).tolist(), "gain": rng.uniform(0, 1, L).tolist(),
                            "chosen": [5, 6, 9]}
    return report


def check_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300, (path, img.shape)
    return img


def _names(report, tmp_path):
    return [p.name for p in draw_all(report, tmp_path)]


@pytest.fixture
def no_warnings(caplog):
    """Plots must skip degenerate input by design, not by draw_all's safety net swallowing an error."""
    caplog.set_level(logging.WARNING, logger="beacon.report.plots")
    yield
    assert not caplog.records, [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------- the full report

def test_draw_all_writes_every_plot(tmp_path, no_warnings):
    out = tmp_path / "nested" / "plots"  # draw_all creates missing parents
    paths = draw_all(synthetic_report(), out)
    assert [p.name for p in paths] == ALL
    assert all(p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL)
    for p in paths:
        check_png(p)


def test_layers_only_when_present(tmp_path, no_warnings):
    layers = synthetic_report(layers=True)["layers"]
    assert _names({"layers": layers}, tmp_path) == ["layers.png"]
    check_png(tmp_path / "layers.png")
    assert _names({"layers": None}, tmp_path / "b") == []
    assert _names({"layers": {"observed": [], "chosen": [1]}}, tmp_path / "c") == []


def test_plot_functions_say_whether_they_drew(tmp_path, no_warnings):
    report = synthetic_report(n=3, steps=3)
    assert plots.plot_recall(report, tmp_path / "r.png") is True
    check_png(tmp_path / "r.png")
    assert plots.plot_interference({"interference": None}, tmp_path / "x.png") is False
    assert plots.plot_layers(report, tmp_path / "y.png") is False
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


# ---------------------------------------------------------------- degenerate reports

def test_empty_and_broken_reports(tmp_path, no_warnings):
    assert _names({}, tmp_path / "a") == []
    assert _names(None, tmp_path / "b") == []
    assert _names({"summary": None, "facts": None, "training": None, "interference": None, "layers": None},
                  tmp_path / "c") == []
    zero = synthetic_report(n=0)
    assert _names(zero, tmp_path / "d") == []  # only the dropped fact, which is never plotted
    zero["facts"][0]["kept"] = None  # present but falsy: still not trained
    assert _names(zero, tmp_path / "e") == []


def test_one_fact(tmp_path, no_warnings):
    report = synthetic_report(n=1, steps=1)
    # What interference() returns for a single fact: not a square matrix, nothing to compare.
    report["interference"] = {"ids": ["inv01"], "cosine": [[1.0]], "step_effect": [[0.0]], "order": [0]}
    names = _names(report, tmp_path)
    assert names == ALL[1:]
    for name in names:
        check_png(tmp_path / name)


def test_two_facts(tmp_path, no_warnings):
    names = _names(synthetic_report(n=2, steps=2), tmp_path)
    assert names == ALL


def test_missing_sections_skip_only_their_plot(tmp_path, no_warnings):
    report = synthetic_report()
    report["interference"] = None
    report["training"]["history"] = []
    report["training"]["distance_trajectories"] = {}
    # learning_curves still has per-fact curves to draw
    assert _names(report, tmp_path / "a") == ["distance_vs_learned.png", "recall.png", "learning_curves.png"]
    report["training"] = None
    assert _names(report, tmp_path / "b") == ["distance_vs_learned.png", "recall.png"]


def test_malformed_values_are_dropped_not_fatal(tmp_path, no_warnings):
    report = synthetic_report(n=4)
    report["facts"][0]["logprob_after"] = None
    report["facts"][1]["semantic_distance"] = float("nan")
    report["facts"][2]["logprob_before"] = "oops"
    report["interference"]["order"] = [0, 0, 1, 7]          # not a permutation: fall back to as-is
    report["interference"]["step_effect"] = [[1.0, 2.0]]   # wrong shape: draw the cosine alone
    report["training"]["distance_trajectories"]["inv01"] = [[0, None], "x", [1]]
    report["training"]["fact_curves"]["inv02"] = [None, -1.0, 2.0]  # a non-positive value: linear y
    report["layers"] = {"observed": [1.0, None, 3.0], "gain": 5, "chosen": [1, 99, "x"]}
    assert _names(report, tmp_path) == ALL + ["layers.png"]
    # Scalars and strings where lists belong: skipped, never iterated into nonsense.
    junk = {"facts": "abc", "training": {"history": 3, "fact_curves": {"a": 1.0}, "distance_trajectories": {"a": 2}},
            "interference": {"ids": "abc", "cosine": 1}, "layers": {"observed": "abc", "chosen": 4}}
    assert _names(junk, tmp_path / "junk") == []


def test_stale_plots_from_a_previous_run_are_removed(tmp_path, no_warnings):
    for name in ALL + ["layers.png"]:  # as a previous, fuller run would have left them
        (tmp_path / name).write_bytes(b"old")
    report = synthetic_report(n=3, steps=3)
    assert _names({"facts": report["facts"]}, tmp_path) == ["distance_vs_learned.png", "recall.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distance_vs_learned.png", "recall.png"]
    check_png(tmp_path / "recall.png")


def test_a_plot_that_raises_does_not_stop_the_others(tmp_path, monkeypatch, caplog):
    def boom(report, path):
        raise RuntimeError("bug")

    monkeypatch.setattr(plots, "PLOTS", (("interference.png", boom),) + plots.PLOTS[1:])
    assert _names(synthetic_report(), tmp_path) == ALL[1:]
    assert "interference.png" in caplog.text


# ---------------------------------------------------------------- what the pictures say

def colour_counts(path):
    """Pixels close to the learned green and the not-learned red."""
    rgb = (check_png(path)[..., :3] * 255).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > r + 50) & (g > b + 30)
    red = (r > g + 60) & (r > b + 50)
    return int(green.sum()), int(red.sum())


@pytest.mark.parametrize("name", ["distance_vs_learned.png", "drift.png", "recall.png"])
def test_colours_say_learned_or_not(tmp_path, name, no_warnings):
    fn = dict(plots.PLOTS)[name]
    fn(synthetic_report(learned=True), tmp_path / "all.png")
    fn(synthetic_report(learned=False), tmp_path / "none.png")
    g_all, r_all = colour_counts(tmp_path / "all.png")
    g_none, r_none = colour_counts(tmp_path / "none.png")
    assert g_all > 200 and g_all > 10 * r_all, (g_all, r_all)
    assert r_none > 200 and r_none > 10 * g_none, (g_none, r_none)


def test_numpy_values_count_like_python_ones(tmp_path, no_warnings):
    """Reports built in memory may hold numpy scalars; a numpy True is still 'learned'."""
    report = synthetic_report(n=3, learned=True)
    for f in report["facts"][:3]:
        f["recall_after"] = np.bool_(True)
        f["logprob_after"] = np.float32(f["logprob_after"])
    green, red = colour_counts(tmp_path / "x.png") if plots.plot_recall(report, tmp_path / "x.png") else (0, 0)
    assert green > 50 and red == 0, (green, red)


def test_drift_direction():
    """Dashed lines are facts pushed away from their target: the report's drift, else the trajectory."""
    assert plots._drift({"drift": 0.1}, [(0, 0.5), (1, 0.2)]) == 0.1
    assert plots._drift({}, [(0, 0.5), (1, 0.7)]) == pytest.approx(0.2)
    assert plots._drift(None, [(0, 0.5)]) is None


def test_merge_plot_only_when_present_and_shows_early_vs_late(tmp_path, no_warnings):
    merge = {"orders": 2, "how": "select",
             "runs": [{"run": 0, "early_recall": 0.25, "late_recall": 1.0}, {"run": 1, "early_recall": 0.5,
                                                                             "late_recall": 0.75}],
             "merged": {"recall": 0.9, "by_run_order": [{"early_recall": 1.0, "late_recall": 0.75},
                                                        {"early_recall": 0.75, "late_recall": 1.0}]}}
    assert _names({"merge": merge}, tmp_path) == ["merge.png"]
    check_png(tmp_path / "merge.png")
    assert _names({"merge": None}, tmp_path / "b") == []
    assert _names({"merge": {"runs": []}}, tmp_path / "c") == []
    # the bars carry the report's numbers, in order: own run first/last third, then merged
    import matplotlib.pyplot as plt
    captured = {}
    real_close = plt.close
    plt.close = lambda fig=None: captured.setdefault("fig", fig) and None
    try:
        assert plots.plot_merge({"merge": merge}, tmp_path / "m.png")
    finally:
        plt.close = real_close
    ax = captured["fig"].axes[0]
    heights = [round(b.get_height(), 2) for b in ax.patches]
    assert heights == [0.25, 0.5, 1.0, 0.75, 1.0, 0.75, 0.75, 1.0]
    assert "merged recall 90%" in ax.get_title()
    real_close(captured["fig"])


def test_layer_title_shows_ranges():
    assert plots._ranges([9, 3, 4, 5, 29]) == "3–5, 9, 29"
    assert plots._ranges([7]) == "7"
