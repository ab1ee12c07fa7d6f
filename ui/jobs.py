"""One model job (check or train) at a time, across visitors.

Gradio's queue orders the events (concurrency_limit=1); this lock also covers a run whose tab was
closed and is still finishing. A handler takes the lock with `wait_for_slot` and hands it to
`stream`, whose worker thread releases it when the job ends, however it ends.
"""
from __future__ import annotations

import logging
import queue
import threading

from core.facts import FactsError
from core.models import ModelError

log = logging.getLogger("beacon.app")
_MODEL_LOCK = threading.Lock()
# Stop flags by Gradio session, for demo.unload, which cannot see gr.State.
ACTIVE: dict[str, threading.Event] = {}


def stream(target, name):
    """Run target(progress_callback) in a thread that releases _MODEL_LOCK when done; yield the events
    it has sent every ~0.5 s: ("progress", event) ... and last ("done", result) or ("error", exception)."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            events.put(("done", target(lambda ev: events.put(("progress", ev)))))
        except Exception as e:  # shown to the person in one line; the traceback goes to the server log
            if not isinstance(e, (ModelError, FactsError)):
                log.exception("%s failed", name)
            events.put(("error", e))
        finally:
            _MODEL_LOCK.release()

    threading.Thread(target=work, daemon=True, name=name).start()
    while True:
        try:
            batch = [events.get(timeout=0.5)]
        except queue.Empty:
            batch = []
        while not events.empty():
            batch.append(events.get_nowait())
        yield batch
        if any(kind != "progress" for kind, _ in batch):
            return


def wait_for_slot(stop: threading.Event | None = None):
    """Yields while another visitor's model job (or a closed tab's) is still running; returns True
    holding the lock, or False without it once `stop` is set. The lock is never kept by a stopped
    wait: a Stop that lands just as the lock comes free would otherwise leave it held for ever
    (`held = yield from waiting(wait_for_slot(stop), update)` in a handler gets the answer)."""
    while not _MODEL_LOCK.acquire(timeout=0.5):
        if stop is not None and stop.is_set():
            return False
        yield
    if stop is not None and stop.is_set():
        _MODEL_LOCK.release()
        return False
    return True


def waiting(wait, update):
    """Re-yield `update` for every tick of the generator `wait`; return what `wait` returns."""
    while True:
        try:
            next(wait)
        except StopIteration as done:
            return done.value
        yield update
