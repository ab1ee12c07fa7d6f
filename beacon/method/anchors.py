"""The guard's anchors as text: plain text, a fact written `prompt | answer`, or a held text written
`context |> text` (the guard holds the text after the context, not the context itself); and the anchors
file a person gives (`--anchors FILE`, the app's upload), read with errors that name the line.
"""
from __future__ import annotations

from pathlib import Path

ANCHORS_FILE = Path(__file__).resolve().parents[2] / "assets" / "anchors.txt"
ANSWER_MARK = " | "
HOLD_MARK = " |> "     # "context |> text": the guard holds the text after the context, not the context itself


MAX_ANCHOR_BYTES = 2**20   # an anchors file: 1 MB and 2000 lines at most
MAX_ANCHOR_LINES = 2000


def read_anchors(path=ANCHORS_FILE) -> list[str]:
    """The anchors of a text file, one a line (`#` starts a comment line). A file that cannot be
    used is a ValueError that names it and, where there is one, the line."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ValueError(f"{name}: no such anchors file" if not path.exists() else f"{name}: not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_ANCHOR_BYTES + 1)   # never more, whatever size it reports
    if len(data) > MAX_ANCHOR_BYTES:
        raise ValueError(f"{name}: the anchors file is over the limit of {MAX_ANCHOR_BYTES // 2**20} MB")
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{name}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
                         "save the file with UTF-8 encoding") from None
    lines = text.splitlines()
    if len(lines) > MAX_ANCHOR_LINES:
        raise ValueError(f"{name}: {len(lines)} lines, over the limit of {MAX_ANCHOR_LINES}")
    anchors = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompt, answer = split_anchor(f" {line} ")   # padded: "prompt |" and "| answer" are facts missing a side
        if answer is not None and (not prompt or not answer):
            raise ValueError(f"{name}, line {n}: a fact anchor is `prompt | answer`, with both sides filled")
        anchors.append(line)
    if not anchors:
        raise ValueError(f"{name}: no anchors (every line is empty or a # comment)")
    return anchors


def split_anchor(anchor: str) -> tuple[str, str | None]:
    """"The capital of Chile is | Santiago." -> (prompt, answer); plain text -> (text, None)."""
    prompt, mark, answer = anchor.partition(ANSWER_MARK)
    return (prompt.strip(), answer.strip()) if mark else (anchor, None)


def split_held(anchor: str) -> tuple[str, str] | None:
    """"The capital of Italy is Milan. |> It is ..." -> (context, text held); None for other anchors."""
    context, mark, text = anchor.partition(HOLD_MARK)
    return (context, text) if mark else None


def joiner(context: str) -> str:
    """What goes between a held text's context and its text: a context that ends a line or a turn
    ("assistant\n") is followed by no space."""
    return "" if context[-1:].isspace() else " "


def anchor_text(anchor: str) -> str:
    if held := split_held(anchor):
        return held[0] + joiner(held[0]) + held[1]
    prompt, answer = split_anchor(anchor)
    return f"{prompt} {answer}" if answer else prompt


# ---------------------------------------------------------------- anchors built from the base model
