"""SIGINT and SIGTERM during ``bench predict`` and ``bench evaluate``: stop, clean up, say what was done.

Inside ``stop_on_signals()`` either signal raises :class:`Stopped` in the main thread, wherever it
is, so every ``finally`` and every temporary file of ``bench.files.atomic_write`` is cleaned up
(the default SIGTERM ends the process on the spot and leaves them). Later signals are ignored
until the block is left: the cleanup is not interrupted in turn. The code that knows what was
finished adds it to the exception (``note``); the command prints it and exits 128 + the signal's
number (130 for SIGINT, 143 for SIGTERM). Training has its own handling (``bench.engine.train``):
it checkpoints at the next iteration instead.

A signal that lands while Python runs a finalizer (a weakref callback, a ``__del__``) raises there,
where Python prints the exception and drops it. The block's ``sys.unraisablehook`` keeps such a
lost stop instead; ``raise_if_stopped()``, called between units of work (cases, inputs), and the
end of the block raise it again, so the command still stops and exits 128 + the signal.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A signal asked the command to stop; ``note`` says what was finished and what was not."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.note = ""

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {self.name}" + (f": {self.note}" if self.note else "")


class _Handler:
    """The signal handler of one ``stop_on_signals`` block."""

    def __init__(self) -> None:
        self.stopping = False
        self.deferred = 0  # depth of ``uninterrupted`` blocks
        self.pending: int | None = None
        self.raised: Stopped | None = None  # the one raised by this handler
        self.lost: int | None = None  # its signal, when a finalizer swallowed it

    def __call__(self, signum: int, frame: object) -> None:
        if self.stopping:  # a second signal must not interrupt the cleanup of the first
            return
        if self.deferred:
            self.pending = signum
            return
        self.stopping = True
        self.raised = Stopped(signum)
        raise self.raised

    def unraisable(self, previous):
        """A ``sys.unraisablehook`` that keeps this handler's swallowed stop and passes on the rest."""
        def hook(unraisable) -> None:
            if self.raised is not None and unraisable.exc_value is self.raised:
                self.lost = self.raised.signum
                return
            previous(unraisable)
        return hook


_active: list[_Handler] = []


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the block (the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    old = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    old_hook, sys.unraisablehook = sys.unraisablehook, handler.unraisable(sys.unraisablehook)
    _active.append(handler)
    try:
        yield
        if handler.lost is not None:  # swallowed after the last ``raise_if_stopped()``: the work is done
            stop = Stopped(handler.lost)
            stop.note = "the signal came as the command was ending; everything it was asked to do was finished"
            raise stop
    finally:
        _active.remove(handler)
        sys.unraisablehook = old_hook
        for sig, previous in old.items():
            signal.signal(sig, previous)


def raise_if_stopped() -> None:
    """Raise the stop that a finalizer swallowed (a no-op otherwise); call it between units of work."""
    handler = _active[-1] if _active else None
    if handler is not None and handler.lost is not None:
        signum, handler.lost = handler.lost, None
        raise Stopped(signum)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A signal that arrives in the block (a few renames that belong together) stops the command
    only once the block is done."""
    handler = _active[-1] if _active else None
    if handler is None:
        yield
        return
    handler.deferred += 1
    try:
        yield
    finally:
        handler.deferred -= 1
    if not handler.deferred and handler.pending is not None:  # the block is done: now stop
        signum, handler.pending = handler.pending, None
        handler.stopping = True
        raise Stopped(signum)
