"""Run folders expire: what a public server keeps on disk stays bounded.

RUNS/<session>/<run>/ (and RUNS/<session>/uploads/) are the items. `sweep` deletes those older than
the time to live (their newest file counts), then the oldest until RUNS is under the disk budget;
an item that a job is writing to (`active`) is never deleted. `start` runs it every `every_s` seconds
in a daemon thread. Gradio's own cache of served files expires through Blocks(delete_cache=...).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger("beacon.app")


def _usage(item: Path) -> tuple[float, int]:
    """(newest modification time, bytes) of a folder and everything in it."""
    newest, size = item.stat().st_mtime, 0
    for p in item.rglob("*"):
        try:
            st = p.lstat()
        except OSError:   # deleted meanwhile
            continue
        newest = max(newest, st.st_mtime)
        size += st.st_size if p.is_file() else 0
    return newest, size


def sweep(runs: Path, ttl_s: float, budget_bytes: float, active=frozenset(), now: float | None = None) -> list[Path]:
    """Delete expired items under runs, then the oldest until the rest fit in budget_bytes; never one in
    `active` (paths of runs in progress) or one holding them. Returns what was deleted."""
    now = time.time() if now is None else now
    active = {Path(a).resolve() for a in active}
    items = []
    for session in (runs.iterdir() if runs.is_dir() else ()):
        if session.is_dir():
            for item in session.iterdir():
                if item.is_dir():
                    items.append((*_usage(item), item))
    items.sort(key=lambda t: t[0])   # oldest first
    total = sum(size for _, size, _ in items)
    deleted = []
    for newest, size, item in items:
        if item.resolve() in active or any(item.resolve() in a.parents for a in active):
            continue
        if now - newest > ttl_s or total > budget_bytes:
            shutil.rmtree(item, ignore_errors=True)
            total -= size
            deleted.append(item)
    for session in (runs.iterdir() if runs.is_dir() else ()):
        if session.is_dir() and not any(session.iterdir()):
            session.rmdir()
    if deleted:
        log.info("cleanup: deleted %d run folders; %.0f MB left under %s", len(deleted), total / 2**20, runs)
    return deleted


def start(sweep_once, every_s: float) -> threading.Thread:
    """Call sweep_once() now and every every_s seconds, for as long as the server runs."""
    def loop():
        while True:
            try:
                sweep_once()
            except Exception:   # a cleanup that fails once must not stop the next one
                log.exception("cleanup failed")
            time.sleep(every_s)

    t = threading.Thread(target=loop, daemon=True, name="beacon-cleanup")
    t.start()
    return t
