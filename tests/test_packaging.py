"""The project installs like a Python project: pyproject.toml and requirements.txt agree."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = re.split(r"(==|>=|<=|~=)", line, maxsplit=1) if re.search("[=<>~]", line) else (line, "", "")
            out[name.strip().lower()] = line.replace(" ", "")
    return out


def test_pyproject_and_requirements_pin_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert _pins(project["dependencies"]) == req
    dev = _pins((ROOT / "requirements-dev.txt").read_text().splitlines())
    assert _pins(project["optional-dependencies"]["dev"]) == dev
    assert req["torch"] == "torch==2.13.0"          # a range would pull a multi-GB CUDA build


def test_supported_python_versions_are_stated_and_this_one_is_among_them():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec == ">=3.11,<3.13"
    assert (3, 11) <= sys.version_info[:2] < (3, 13)
    assert 'python_version: "3.11"' in (ROOT / "README.md").read_text()   # the Space runs a supported one


def test_beacon_command_runs_the_cli():
    exe = Path(sys.executable).parent / "beacon"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "beacon"]
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "inject" in r.stdout and "ablate" in r.stdout and "app" in r.stdout


def test_every_package_of_the_app_is_packaged():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for pattern in ("*/__init__.py", "*/*/__init__.py")
             for p in ROOT.glob(pattern) if p.parts[len(ROOT.parts)] not in ("tests", ".venv")}
    assert {"beacon", "beacon.app"} <= found and set(setup["packages"]) == found   # `beacon app` imports the app
    assert setup["py-modules"] == ["app"]
