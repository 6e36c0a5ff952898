"""Waiting calls: at most ``server.max_waiting`` requests may hold an HTTP thread while pictures are made.

The servers (waitress, cheroot) run each request on one of ``server.threads`` threads, and a call
that answers only when its pictures are done (``"wait": true``, an event stream, the OpenAI and
A1111 generate routes, the tools that wait) keeps its thread that whole time. With every thread
held so, the owner's ``/api/health``, job status, progress, cancel and every other quick request
queued behind them for seconds. So waiting calls take a slot first, before anything is queued;
when none is free the call is refused with the documented 429 (``BusyError``: a JSON error and
``Retry-After``), as when the queue is full, and ``threads - max_waiting`` threads always stay
free for everything else. Nothing is queued for a refused call, so nothing accepted is lost.

    >>> hold_while_waiting()  # in a route, after checking the body, before submitting  # doctest: +SKIP

The slot is given back once the response is closed: after the last byte of an event stream, or
when the client left.
"""

from __future__ import annotations

import threading

from flask import Flask, Response, current_app, g

from pennello.errors import BusyError

from .context import current_engine

_EXTENSION = "pennello.waiting"


class _Slot:
    """One taken slot; given back once, however many of the hooks below see it."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots, self._held = slots, True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._slots.release()


def init_app(app: Flask, max_waiting: int) -> None:
    """Give ``app`` its ``max_waiting`` slots and the hooks that return them."""
    app.extensions[_EXTENSION] = (threading.BoundedSemaphore(max_waiting), max_waiting)
    app.after_request(_release_on_close)
    app.teardown_request(_release_unanswered)


def hold_while_waiting() -> None:
    """Take a waiting slot for this request until its response is closed.

    Raises:
        BusyError: every slot is taken (429 with Retry-After: when the queue's work likely frees one).
    """
    if "pennello_waiting" in g:
        return  # a route that reaches a second waiting step keeps its one slot
    slots, limit = current_app.extensions[_EXTENSION]
    if not slots.acquire(blocking=False):
        raise BusyError(f"{limit} calls are already waiting for their pictures (server.max_waiting); "
                        f"try again shortly, or queue the job without waiting and follow it",
                        retry_after=current_engine().queue.retry_after())
    g.pennello_waiting = _Slot(slots)


def _release_on_close(response: Response) -> Response:
    slot = g.get("pennello_waiting")
    if slot is not None and response.is_streamed:
        response.call_on_close(slot.release)  # an event stream holds its thread until it ends
        g.pennello_waiting_streams = True
    return response


def _release_unanswered(_error: BaseException | None) -> None:
    # Every answer but a stream is whole by now (a file sent with send_file never calls the
    # response's close hooks), and an error that skipped after_request still gives the slot back.
    slot = g.get("pennello_waiting")
    if slot is not None and not g.get("pennello_waiting_streams"):
        slot.release()
