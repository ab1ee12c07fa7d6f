"""The documentation keeps up with the code: every setting of `beacon inject` (beacon/config.py) is named in
docs/usage.md, every doc the README links exists, and the README stays a page a newcomer reads."""
import argparse
import re
from pathlib import Path

from beacon.config import add_arguments

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    usage = (ROOT / "docs" / "usage.md").read_text()
    # --no-x is documented with --x (a BooleanOptionalAction)
    missing = sorted(o for o in options if not o.startswith("--no-") and o not in usage)
    assert not missing, f"docs/usage.md does not mention {missing}"


def test_the_readme_is_short_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(((?:docs/)[^)#]+)\)", readme)
    assert links and all((ROOT / link).exists() for link in links), [l for l in links if not (ROOT / l).exists()]
    for doc in (ROOT / "docs").glob("*.md"):   # links between docs pages
        for link in re.findall(r"\]\(([a-z_]+\.md)\)", doc.read_text()):
            assert (ROOT / "docs" / link).exists(), f"{doc.name} links {link}"
    # the project speaks of itself, not of how it came to be
    for text in [readme, *(d.read_text() for d in (ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\b[Ss]top \d+\b|\b[Ii]ssue \d+\b", text)
