"""Plots of one injection run, drawn from the report dict alone (no torch, no UI).

Each plot has its own function `plot_<name>(report, path) -> bool`: it draws the PNG and returns
True, or returns False and writes nothing when the report lacks what that plot needs. Reports
come from runs that can be tiny, stopped early or partly missing, so every function reads the
report defensively; `draw_all` adds a last safety net so a plotting bug never costs a run its
report.json (the pipeline writes it after the plots).
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and tests have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import Bbox, ScaledTranslation  # noqa: E402

log = logging.getLogger(__name__)

GREEN = "#2e9e5b"   # learned / recalled
RED = "#d1495b"     # not learned
GREY = "#8c8c8c"    # neutral: "before", unknown
BLUE = "#3a6ea5"    # neutral: loss and other non-verdict series
SIZE = (7, 4.5)
DPI = 110
MAX_LABELLED = 40   # above this many facts, id labels become unreadable clutter


# ---------------------------------------------------------------- reading the report

def _num(x) -> float | None:
    """x as a finite float, else None (None, NaN, strings and bools all count as missing)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _list(x) -> list:
    """x if it is a list (or tuple), else empty: a stray scalar or string must not be iterated."""
    return list(x) if isinstance(x, (list, tuple)) else []


def _section(report, key) -> dict:
    value = report.get(key) if isinstance(report, dict) else None
    return value if isinstance(value, dict) else {}


def _facts(report, kept_only=True) -> list[dict]:
    facts = [f for f in _list(report.get("facts") if isinstance(report, dict) else None) if isinstance(f, dict)]
    # A fact without a "kept" flag is taken as trained: old or hand-made reports lack it.
    return [f for f in facts if f.get("kept", True)] if kept_only else facts


def _learned(fact: dict) -> bool:
    value = fact.get("recall_after")
    return isinstance(value, (bool, np.bool_)) and bool(value)  # None (not measured) is not learned


def _colour(fact: dict | None) -> str:
    if fact is None:
        return GREY
    return GREEN if _learned(fact) else RED


def _verdict_handles(facts, learned="learned", not_learned="not learned", **style) -> list[Line2D]:
    """Legend entries for the verdicts present only: a swatch for an absent group would mislead."""
    style = style or {"ls": "-"}
    handles = []
    if any(f is not None and _learned(f) for f in facts):
        handles.append(Line2D([], [], color=GREEN, label=learned, **style))
    if any(f is not None and not _learned(f) for f in facts):
        handles.append(Line2D([], [], color=RED, label=not_learned, **style))
    return handles


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _integer_steps(ax):
    """Steps are whole numbers: no 0.2-step ticks on short runs."""
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # a one-step run: widen so there are integers to tick
        mid = round((lo + hi) / 2)
        ax.set_xlim(mid - 1, mid + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _ranges(xs) -> str:
    """[3, 4, 5, 9] -> '3–5, 9': a title that lists 27 layers one by one runs off the figure."""
    out, xs = [], sorted(set(xs))
    for x in xs:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in out)


LABEL_CHARS = 24    # a subject longer than this is cut with "…": a tick label, not a sentence


def fact_labels(facts: list[dict]) -> dict[str, str]:
    """{fact id: a short name a person recognises}: the subject (else the prompt's first words), cut to
    LABEL_CHARS; facts that share a subject get their relation (else their id) after it."""
    def short(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1].rstrip() + "…"

    facts = [f for f in facts if isinstance(f, dict) and f.get("id") is not None]
    base = {str(f["id"]): short(f.get("subject") or f.get("prompt") or f["id"]) for f in facts}
    counts: dict[str, int] = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    out = {}
    for f in facts:
        fid = str(f["id"])
        label = base[fid]
        if counts[label] > 1:
            label = f"{label} · {short(f.get('relation') or fid)}"
        out[fid] = label if label not in out.values() else f"{label} ({fid})"
    return out


def _fid(fact: dict, i: int, labels: dict | None = None) -> str:
    """The fact's label in a plot: its subject when the report names one (fact_labels), else its id."""
    fid = str(fact.get("id") or f"#{i + 1}")
    return (labels or {}).get(fid, fid)


def _label_size(n: int) -> float:
    """Tick/annotation font size that still fits n labels."""
    return max(5.0, min(8.0, 220 / max(n, 1)))


def _matrix(x, n: int) -> np.ndarray | None:
    """x as an n x n float array, or None if it is not one."""
    try:
        a = np.array(x, dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.shape == (n, n) else None


def _drift(fact: dict | None, points) -> float | None:
    """How far training moved a fact from its target: the report's drift, else last - first."""
    d = _num(fact.get("drift")) if fact else None
    if d is None and len(points) >= 2:
        d = points[-1][1] - points[0][1]
    return d


def _trajectory(raw) -> list[tuple[float, float]]:
    """[[step, distance], ...] with malformed entries dropped, in step order."""
    pts = []
    for p in _list(raw):
        if isinstance(p, (list, tuple)) and len(p) >= 2 and _num(p[0]) is not None and _num(p[1]) is not None:
            pts.append((_num(p[0]), _num(p[1])))
    return sorted(pts)


def _label_points(ax, pts, fontsize):
    """Id labels beside (x, y, label) points, nudged up or down until they stop overlapping."""
    fig = ax.figure
    fig.tight_layout()  # settle the axes first: overlaps are measured in pixels
    renderer = fig.canvas.get_renderer()
    # Start with the markers themselves so a label never covers another point.
    r = 4  # pixels, about a marker's radius at this size and dpi
    placed = [Bbox.from_extents(px - r, py - r, px + r, py + r)
              for px, py in ax.transData.transform([(x, y) for x, y, _ in pts])]
    for x, y, label in sorted(pts, key=lambda p: (p[0], p[1])):
        for dy in (3, -11, 11, -19, 19, -27, 27):
            text = ax.annotate(label, (x, y), xytext=(4, dy), textcoords="offset points",
                               fontsize=fontsize, color="#444444")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                break
            text.remove()
        else:  # crowded everywhere: keep the plain position rather than lose the label
            text = ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points",
                               fontsize=fontsize, color="#444444")
            box = text.get_window_extent(renderer)
        placed.append(box)


def _legend_below(ax, handles, ncol):
    """A legend under the axes, where it can never hide data."""
    # Anchored a fixed distance below the axes (past tick labels and x label), whatever the height.
    below = ax.transAxes + ScaledTranslation(0, -0.42, ax.figure.dpi_scale_trans)
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
              ncol=ncol, frameon=False)


@contextmanager
def _figure(path, ncols=1, size=SIZE, **kw):
    """A figure that is always closed, and saved only if the body finishes."""
    fig, axes = plt.subplots(1, ncols, figsize=size, **kw)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- 1. interference

def plot_interference(report: dict, path) -> bool:
    """Gradient cosine and first-order step effect between kept facts, clustered."""
    inter = _section(report, "interference")
    ids = _list(inter.get("ids"))
    n = len(ids)
    cos = _matrix(inter.get("cosine"), n)
    if n < 2 or cos is None:  # one fact has nothing to interfere with
        return False
    effect = _matrix(inter.get("step_effect"), n)
    order = inter.get("order")
    if not (isinstance(order, list) and sorted(o for o in order if isinstance(o, int)) == list(range(n))):
        order = list(range(n))  # a broken order must not scramble the labels
    names = fact_labels(_facts(report, kept_only=False))
    labels = [names.get(str(ids[i]), str(ids[i])) for i in order]
    cos = cos[np.ix_(order, order)]

    panels = [(cos, "Gradient cosine between facts\n+1 same direction, -1 opposed", "RdBu_r", 1.0)]
    if effect is not None:
        effect = effect[np.ix_(order, order)]
        # The diagonal (a fact on itself) dwarfs the cross terms; scale the colours to the cross
        # terms, which are the interference, and let the diagonal saturate.
        absolute = np.abs(effect)
        off = absolute[~np.eye(n, dtype=bool) & np.isfinite(absolute)]
        every = absolute[np.isfinite(absolute)]
        lim = next((float(v.max()) for v in (off, every) if v.size and v.max() > 0), 1.0)
        panels.append((effect, "Step effect: Δ log-prob of column from a\nstep on row  (>0 helps; diagonal clipped)",
                       "RdBu_r", lim))

    fs = _label_size(n)
    with _figure(path, ncols=len(panels), size=(4.6 * len(panels) + 0.4, 4.8), squeeze=False) as (fig, axes):
        for ax, (m, title, cmap, lim) in zip(axes[0], panels):
            im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
            ax.set_title(title, fontsize=9)
            if n <= MAX_LABELLED:
                ax.set_xticks(range(n), labels, rotation=90, fontsize=fs)
                ax.set_yticks(range(n), labels, fontsize=fs)
            else:
                ax.set_xlabel("fact (clustered order)")
                ax.set_ylabel("fact (clustered order)")
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"Interference between {n} facts before training (clustered order)", fontsize=11)
    return True


# ---------------------------------------------------------------- 2. distance vs learned

def plot_distance_vs_learned(report: dict, path) -> bool:
    """Did a fact's semantic distance from the model predict whether it was learned?"""
    pts, names = [], fact_labels(_facts(report))
    for i, f in enumerate(_facts(report)):
        x, b, a = _num(f.get("semantic_distance")), _num(f.get("logprob_before")), _num(f.get("logprob_after"))
        if None not in (x, b, a):
            pts.append((x, a - b, f, _fid(f, i, names)))
    if not pts:
        return False
    n_learned = sum(_learned(f) for _, _, f, _ in pts)

    with _figure(path) as (fig, ax):
        ax.axhline(0, color=GREY, lw=0.8, zorder=0)
        for learned, name in ((True, "learned"), (False, "not learned")):
            group = [p for p in pts if _learned(p[2]) == learned]
            if group:  # no legend entry (and no swatch) for an empty group
                ax.scatter([p[0] for p in group], [p[1] for p in group], s=36, color=GREEN if learned else RED,
                           edgecolor="white", linewidth=0.6, label=f"{name} ({len(group)})", zorder=3)
        ax.margins(x=0.08)  # room for the labels of the outermost points
        ax.set_xlabel("semantic distance before training (model's answer vs target)")
        ax.set_ylabel("gain in target log-prob (after − before)")
        ax.set_title(f"Semantic distance vs. what training gained: {n_learned} of {len(pts)} learned")
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
        ax.grid(alpha=0.25)
        if len(pts) <= MAX_LABELLED:
            _label_points(ax, [(x, y, fid) for x, y, _, fid in pts], max(6.0, _label_size(len(pts)) - 1))
    return True


# ---------------------------------------------------------------- 3. drift

def plot_drift(report: dict, path) -> bool:
    """Semantic distance to the target over training, one line per fact."""
    trajectories = _section(_section(report, "training"), "distance_trajectories")
    by_id = {str(f.get("id")): f for f in _facts(report, kept_only=False)}
    lines = []
    for fid, raw in trajectories.items():
        pts = _trajectory(raw)
        if pts:
            fact = by_id.get(str(fid))
            d = _drift(fact, pts)
            lines.append((pts, fact, d is not None and d > 0))
    if not lines:
        return False
    away = sum(drifted for _, _, drifted in lines)

    with _figure(path) as (fig, ax):
        for pts, fact, drifted in lines:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=_colour(fact), lw=1.1, alpha=0.6, ls="--" if drifted else "-",
                    marker="o" if len(pts) == 1 else None, ms=3)  # a lone point needs a marker to show
        ax.set_xlabel("training step")
        ax.set_ylabel("semantic distance to target")
        drifted = f"{_count(away, 'fact')} drifted away (dashed)" if away else "none drifted away"
        ax.set_title(f"Distance to target during training ({_count(len(lines), 'fact')})\n{drifted}", fontsize=11)
        _integer_steps(ax)
        handles = _verdict_handles([fact for _, fact, _ in lines])
        if away:
            handles.append(Line2D([], [], color=GREY, ls="--", label="drifted away"))
        if handles:
            _legend_below(ax, handles, ncol=len(handles))
        ax.grid(alpha=0.25)
    return True


# ---------------------------------------------------------------- 4. recall

def plot_recall(report: dict, path) -> bool:
    """Target log-prob before -> after for each kept fact, marked by whether it is recalled."""
    rows, names = [], fact_labels(_facts(report))
    for i, f in enumerate(_facts(report)):
        b, a = _num(f.get("logprob_before")), _num(f.get("logprob_after"))
        if b is not None and a is not None:
            rows.append((_fid(f, i, names), b, a, f))
    if not rows:
        return False
    n = len(rows)
    recalled = sum(_learned(f) for *_, f in rows)
    # Grow with the number of facts so each keeps a readable row.
    height = min(max(SIZE[1], 1.4 + 0.22 * n), 16)

    with _figure(path, size=(SIZE[0], height)) as (fig, ax):
        y = np.arange(n)
        for yi, (_, b, a, f) in zip(y, rows):
            ax.plot([b, a], [yi, yi], color="#bbbbbb", lw=1.2, zorder=1)
        ax.scatter([r[1] for r in rows], y, s=34, facecolor="white", edgecolor=GREY, linewidth=1.2,
                   zorder=2, label="before")
        ax.scatter([r[2] for r in rows], y, s=40, color=[_colour(r[3]) for r in rows], zorder=3)
        pitch = (height - 1.4) * 72 / n  # points per row
        if pitch >= 6.5:
            ax.set_yticks(y, [r[0] for r in rows], fontsize=min(8.0, 0.75 * pitch))
        else:  # too many rows to name: ids would be a black smear
            ax.set_yticks([])
            ax.set_ylabel("fact (report order)")
        ax.set_ylim(n - 0.5, -0.5)  # first fact at the top, as in the report
        ax.set_xlabel("target log-prob (closer to 0 = more likely)")
        ax.set_title(f"Target log-prob before → after training: {recalled} of {n} recalled")
        before = Line2D([], [], marker="o", ls="", mfc="white", mec=GREY, label="before")
        after = _verdict_handles([r[3] for r in rows], "after, recalled", "after, not recalled", marker="o", ls="")
        _legend_below(ax, [before] + after, ncol=3)
        ax.grid(axis="x", alpha=0.25)
    return True


# ---------------------------------------------------------------- 5. learning curves

def plot_learning_curves(report: dict, path) -> bool:
    """Left: loss and recall per step. Right: each fact's target NLL each time it was trained."""
    training = _section(report, "training")
    history = [h for h in _list(training.get("history")) if isinstance(h, dict) and _num(h.get("step")) is not None]
    by_id = {str(f.get("id")): f for f in _facts(report, kept_only=False)}
    curves = []
    for fid, raw in _section(training, "fact_curves").items():
        vals = [_num(v) for v in _list(raw)]
        if any(v is not None for v in vals):
            curves.append((vals, by_id.get(str(fid))))
    panels = (["history"] if history else []) + (["curves"] if curves else [])
    if not panels:
        return False

    size = (11, 4.5) if len(panels) == 2 else SIZE
    with _figure(path, ncols=len(panels), size=size, squeeze=False) as (fig, axes):
        axes = dict(zip(panels, axes[0]))
        if "history" in axes:
            ax = axes["history"]
            steps = [_num(h["step"]) for h in history]
            if any("run" in h for h in history):  # K data orders: each run restarts at step 1, so count on
                steps = list(range(1, len(history) + 1))
            loss = [_num(h.get("loss")) for h in history]
            mark = "o" if len(history) < 3 else None  # one or two steps make no visible line alone
            ax.plot(steps, [np.nan if v is None else v for v in loss], color=BLUE, marker=mark, label="loss")
            ax.set_xlabel("training step")
            ax.set_ylabel("training loss", color=BLUE)
            ax.grid(alpha=0.25)
            recall = [_num(h.get("recall")) for h in history]
            handles = [Line2D([], [], color=BLUE, label="loss")]
            if any(r is not None for r in recall):
                ax2 = ax.twinx()
                ax2.plot(steps, [np.nan if r is None else r for r in recall], color=GREEN, marker=mark)
                ax2.set_ylim(-0.03, 1.03)
                ax2.set_ylabel("recall (fraction of facts)", color=GREEN)
                handles.append(Line2D([], [], color=GREEN, label="recall"))
            _legend_below(ax, handles, ncol=len(handles))
            ax.set_title("Loss and recall per step")
            _integer_steps(ax)
        if "curves" in axes:
            ax = axes["curves"]
            for vals, fact in curves:
                xs = np.arange(1, len(vals) + 1)
                ys = np.array([np.nan if v is None else v for v in vals])
                ax.plot(xs, ys, color=_colour(fact), lw=0.9, alpha=0.6,
                        marker="o" if len(vals) == 1 else None, ms=3)
            finite = [v for vals, _ in curves for v in vals if v is not None]
            if all(v > 0 for v in finite):  # NLL spans orders of magnitude as facts are learned
                ax.set_yscale("log")
            ax.set_xlabel("times the fact was trained")
            ax.set_ylabel("target NLL")
            ax.set_title(f"Per-fact target NLL ({_count(len(curves), 'fact')})")
            _integer_steps(ax)
            handles = _verdict_handles([fact for _, fact in curves])
            if handles:
                _legend_below(ax, handles, ncol=len(handles))
            ax.grid(alpha=0.25)
    return True


# ---------------------------------------------------------------- 6. layers

def plot_layers(report: dict, path) -> bool:
    """Per-layer logit-lens losses (lines), deviation and gain (bars), chosen layers shaded."""
    layers = _section(report, "layers")
    series = {k: [np.nan if _num(v) is None else _num(v) for v in _list(layers.get(k))]
              for k in ("observed", "ideal", "deviation", "gain")}
    n = max(len(v) for v in series.values())
    if n == 0:
        return False
    chosen = [int(c) for c in _list(layers.get("chosen"))
              if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < n]

    with _figure(path) as (fig, ax):
        bars = ax.twinx()
        # Lines above bars: the twin axis would otherwise paint over the main one.
        ax.set_zorder(bars.get_zorder() + 1)
        ax.patch.set_visible(False)
        for i, c in enumerate(chosen):
            bars.axvspan(c - 0.5, c + 0.5, color="#f2c14e", alpha=0.3, lw=0, label="chosen" if i == 0 else None)
        for key, colour, ls in (("observed", BLUE, "-"), ("ideal", "#333333", "--")):
            if series[key]:
                ax.plot(range(len(series[key])), series[key], color=colour, ls=ls, marker="o", ms=3, label=key)
        width = 0.38
        for key, colour, shift in (("deviation", "#e08a3c", -width / 2), ("gain", "#7b68b5", width / 2)):
            if series[key]:
                bars.bar(np.arange(len(series[key])) + shift, series[key], width=width, color=colour,
                         alpha=0.55, label=key)
        bars.axhline(0, color=GREY, lw=0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel("logit-lens loss")
        bars.set_ylabel("deviation / gain")
        if n <= 48:
            ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=_label_size(n))
        ax.set_xlim(-0.7, n - 0.3)
        handles = ax.get_legend_handles_labels()[0] + bars.get_legend_handles_labels()[0]
        _legend_below(ax, handles, ncol=len(handles))
        picked = _ranges(chosen) if chosen else "none"
        ax.set_title(f"Where in the network the facts are learned (chosen layers: {picked})", fontsize=11)
    return True


# ---------------------------------------------------------------- 7. merging over data orders

def plot_merge(report: dict, path) -> bool:
    """Recall of the facts seen first and last in each run's order, per run and after merging."""
    merge = _section(report, "merge")
    runs = [r for r in _list(merge.get("runs")) if isinstance(r, dict)]
    merged = _section(merge, "merged")
    by_order = [r for r in _list(merged.get("by_run_order")) if isinstance(r, dict)]
    if not runs:
        return False
    labels = [f"run {r.get('run', i)}" for i, r in enumerate(runs)]
    early = [_num(r.get("early_recall")) for r in runs]
    late = [_num(r.get("late_recall")) for r in runs]
    # After merging, the same facts (each run's first and last third) measured on the merged adapter.
    early_m = [_num(r.get("early_recall")) for r in by_order] + [None] * (len(runs) - len(by_order))
    late_m = [_num(r.get("late_recall")) for r in by_order] + [None] * (len(runs) - len(by_order))
    x = np.arange(len(runs))
    w = 0.2
    with _figure(path) as (fig, ax):
        for vals, shift, colour, alpha, label in ((early, -1.5, "#e08a3c", 0.9, "first third, own run"),
                                                  (late, -0.5, BLUE, 0.9, "last third, own run"),
                                                  (early_m, 0.5, "#e08a3c", 0.45, "first third, merged"),
                                                  (late_m, 1.5, BLUE, 0.45, "last third, merged")):
            ax.bar(x + shift * w, [np.nan if v is None else v for v in vals], width=w, color=colour, alpha=alpha,
                   label=label, edgecolor="#333333" if "merged" in label else None, lw=0.5)
        ax.set_xticks(x, labels)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall")
        total = _num(merged.get("recall"))
        how = merge.get("how") or "merge"
        ax.set_title(f"Facts seen early vs late in each data order ({how}"
                     + (f"; merged recall {total:.0%})" if total is not None else ")"), fontsize=11)
        _legend_below(ax, ax.get_legend_handles_labels()[0], ncol=2)
        ax.grid(axis="y", alpha=0.25)
    return True


# ---------------------------------------------------------------- all of them

PLOTS = (
    ("interference.png", plot_interference),
    ("distance_vs_learned.png", plot_distance_vs_learned),
    ("drift.png", plot_drift),
    ("recall.png", plot_recall),
    ("learning_curves.png", plot_learning_curves),
    ("layers.png", plot_layers),
    ("merge.png", plot_merge),
)


def draw_all(report: dict, out_dir) -> list[Path]:
    """Write every plot the report supports into out_dir; returns their paths in PLOTS order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = report if isinstance(report, dict) else {}
    written = []
    for name, plot in PLOTS:
        path = out / name
        if name in ("layers.png", "merge.png") and not report.get(name.removesuffix(".png")):
            drew = False
        else:
            try:
                drew = plot(report, path)
            except Exception:  # a plot is never worth losing the run's report over
                log.warning("could not draw %s", name, exc_info=True)
                drew = False
        if drew:
            written.append(path)
        else:
            # A reused output folder must not show a previous run's plot as this run's.
            path.unlink(missing_ok=True)
    return written
