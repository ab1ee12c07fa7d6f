"""The code's shape, read from its source: no import cycles, no reaches into another module's private names,
no function longer than a screen or two outside the page's layout, and only the app imports Gradio."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("beacon",)
MAX_LINES = 80
LONG_ALLOWED = {("beacon/app/layout.py", "build_demo")}   # the page, one component after another


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for pkg in PACKAGES
            for p in sorted((ROOT / pkg).rglob("*.py")) if p.stem != "__init__"}


def _imports(name: str, path: Path):
    """(module imported, names taken from it) for every import in the file, at any depth (an import inside a
    function is an edge too: it only hides a cycle until that function runs)."""
    package = name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            here = ".".join(package[:len(package) - node.level + 1])
            base = here + (f".{node.module}" if node.module else "") if node.level else (node.module or "")
            yield base, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for base, names in _imports(m, path):
            targets = {base} | {f"{base}.{n}" for n in names}
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = _graph()
    assert graph["beacon.measure.evaluate"] >= {"beacon.model.lm", "beacon.method.rewordings"}, "the walk sees the imports"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_module_takes_another_modules_private_names():
    mods = _modules()
    reaches = [(m, base, n) for m, path in mods.items() for base, names in _imports(m, path)
               for n in names if base in mods and base != m and n.startswith("_") and not n.startswith("__")]
    assert not reaches


def test_only_the_app_imports_gradio():
    for m, path in _modules().items():
        if not m.startswith("beacon.app."):
            assert not [b for b, _ in _imports(m, path) if b.split(".")[0] == "gradio"], m


def test_no_function_longer_than_80_lines_outside_the_layout():
    long = []
    for path in [ROOT / "app.py", *[p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]]:
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in LONG_ALLOWED:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_the_default_path_never_imports_what_did_not_help(tiny_dir):
    # Statically: outside beacon/experimental/, it is imported only inside a function (where its setting is on) ...
    for m, path in _modules().items():
        if m.startswith("beacon.experimental"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not [n for n in top if "experimental" in (getattr(n, "module", None) or "")
                    or any("experimental" in a.name for a in n.names)], m
    # ... and at run time: the app, a default guarded training run behind the gate, then one with each setting on.
    script = f"""
import sys
import app
from tests.test_train import FACTS, FACT_ANCHORS, _tiny
from beacon.method.train import train
model, tok, cfg = _tiny({str(tiny_dir)!r}, steps=3, early_stop=False, gate="from-subject")
train(model, tok, FACTS, cfg=cfg, anchors=FACT_ANCHORS)
print(sorted(m for m in sys.modules if m.startswith("beacon.experimental")))
model, tok, cfg = _tiny({str(tiny_dir)!r}, steps=2, early_stop=False, gate="none", null_space=0.9,
                        weighting="dynamic", guard_margin=1.0)
train(model, tok, FACTS, cfg=cfg, anchors=FACT_ANCHORS)
print(sorted(m for m in sys.modules if m.startswith("beacon.experimental")))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    default, switched_on = r.stdout.strip().splitlines()[-2:]
    assert default == "[]"
    assert switched_on == str(["beacon.experimental", "beacon.experimental.dynamic", "beacon.experimental.margin",
                               "beacon.experimental.nullspace"])
