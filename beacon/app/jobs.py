"""One model job (check, train, export, ask) at a time, across visitors, and one per visitor.

A handler takes the lock with `wait_for_slot` and hands it to `stream`, whose worker thread releases
it when the job ends, however it ends; the lock also covers a run whose tab was closed and is still
finishing. The waits form one line, first come first served, so each can say how many jobs are ahead
of it, and the line has a length limit (`QueueFull`). `claim` marks a visitor (a Gradio session) busy
from the click until their job's worker ends: a second job from the same visitor is refused meanwhile.
A Check stops through its progress callback, which raises `Stopped` once its stop flag is set.
"""
from __future__ import annotations

import logging
import collections
import queue
import threading
import time

from beacon.data.facts import FactsError
from beacon.model.models import ModelError

log = logging.getLogger("beacon.app")
_MODEL_LOCK = threading.Lock()
# Stop flags by Gradio session, for demo.unload, which cannot see gr.State.
ACTIVE: dict[str, threading.Event] = {}
_LINE: collections.deque = collections.deque()   # the waits, in order of arrival (tickets)
_BUSY: dict[str, str] = {}                        # visitor -> what they are running
_RUNNING: set[str] = set()                        # run folders a job is writing to: cleanup leaves them
_GUARD = threading.Lock()                         # for _LINE, _BUSY and _RUNNING
_STALE_S = 10.0   # a wait not driven for this long (its page gone, its generator dropped) is skipped


class Stopped(Exception):
    """Raised from a job's progress callback once its stop flag is set; the handler says "stopped"."""


class QueueFull(Exception):
    """More jobs are waiting than the server allows (BEACON_QUEUE_SIZE)."""


def claim(visitor: str, what: str) -> str | None:
    """Mark the visitor busy with `what`; None if done, else what they are already running."""
    with _GUARD:
        if visitor in _BUSY:
            return _BUSY[visitor]
        _BUSY[visitor] = what
        return None


def release(visitor: str | None) -> None:
    with _GUARD:
        _BUSY.pop(visitor, None)


def mark_running(run_dir, on: bool = True) -> None:
    """Keep run_dir from the cleanup (on) or let it go (off; stream does it when its job ends)."""
    with _GUARD:
        (_RUNNING.add if on else _RUNNING.discard)(str(run_dir))


def running_dirs() -> set[str]:
    with _GUARD:
        return set(_RUNNING)


def stopping(progress, stop: threading.Event):
    """The progress callback, raising Stopped once `stop` is set: a job without a should_stop of its own
    (beacon.pipeline.analyze) stops at its next progress message."""
    def tick(event):
        if stop.is_set():
            raise Stopped()
        progress(event)
    return tick


def stream(target, name, visitor: str | None = None, run_dir=None):
    """Run target(progress_callback) in a thread that releases _MODEL_LOCK (and the visitor's claim, and
    run_dir from the running set) when done; yield the events it has sent every ~0.5 s:
    ("progress", event) ... and last ("done", result) or ("error", exception)."""
    events: queue.Queue = queue.Queue()
    if run_dir is not None:
        with _GUARD:
            _RUNNING.add(str(run_dir))

    def work():
        try:
            events.put(("done", target(lambda ev: events.put(("progress", ev)))))
        except Exception as e:  # shown to the person in one line; the traceback goes to the server log
            if not isinstance(e, (ModelError, FactsError, Stopped)):
                log.exception("%s failed", name)
            events.put(("error", e))
        finally:
            with _GUARD:
                _RUNNING.discard(str(run_dir))
            _MODEL_LOCK.release()
            release(visitor)

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


def wait_for_slot(stop: threading.Event | None = None, max_waiting: int | None = None):
    """Yields, every ~0.5 s, how many jobs are ahead (the running one counts) while another visitor's
    model job (or a closed tab's) is still running; returns True holding the lock, or False without it
    once `stop` is set. First come, first served. Raises QueueFull when max_waiting jobs already wait.
    The lock is never kept by a stopped wait: a Stop that lands just as the lock comes free would
    otherwise leave it held for ever (`held = yield from waiting(wait_for_slot(stop), update)` in a
    handler gets the answer)."""
    ticket = [time.monotonic()]   # when its wait last ran: a wait nobody drives any more loses its place
    with _GUARD:
        if max_waiting is not None and len(_LINE) >= max_waiting:
            raise QueueFull(f"{len(_LINE)} jobs are waiting, the most this server takes (BEACON_QUEUE_SIZE); "
                            "try again in a few minutes.")
        _LINE.append(ticket)
    try:
        while True:
            with _GUARD:
                ticket[0] = time.monotonic()
                while _LINE and ticket[0] - _LINE[0][0] > _STALE_S:
                    _LINE.popleft()
                if not any(t is ticket for t in _LINE):
                    _LINE.append(ticket)
                first = _LINE[0] is ticket
            if first and _MODEL_LOCK.acquire(timeout=0.5):
                break
            if stop is not None and stop.is_set():
                return False
            if not first:
                time.sleep(0.5)
            with _GUARD:
                ahead = next((i for i, t in enumerate(_LINE) if t is ticket), 0) + 1
            yield ahead
    finally:
        with _GUARD:
            for i, t in enumerate(_LINE):
                if t is ticket:
                    del _LINE[i]
                    break
    if stop is not None and stop.is_set():
        _MODEL_LOCK.release()
        return False
    return True


def waiting(wait, update):
    """Re-yield `update` (a dict, or a function of the number of jobs ahead) for every tick of the
    generator `wait`; return what `wait` returns."""
    while True:
        try:
            ahead = next(wait)
        except StopIteration as done:
            return done.value
        yield update(ahead) if callable(update) else update
