"""Signals in ``stop_on_signals``: a stop that lands in a finalizer is not lost."""
import os
import signal
import sys

import pytest

from bench.engine.stopping import Stopped, raise_if_stopped, stop_on_signals


class _SignalsInDel:
    """Sends SIGTERM from its ``__del__`` and runs on long enough for the handler to raise in there."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass


def test_a_stop_that_a_finalizer_swallows_is_raised_at_the_next_check_point(capsys):
    with pytest.raises(Stopped) as caught, stop_on_signals():
        obj = _SignalsInDel()
        del obj  # the handler's Stopped is raised inside __del__, where Python drops it
        raise_if_stopped()
        pytest.fail("raise_if_stopped() did not raise the swallowed stop")
    assert caught.value.signum == signal.SIGTERM and caught.value.exit_status == 143
    assert "Exception ignored" not in capsys.readouterr().err


def test_a_stop_swallowed_after_the_last_check_is_raised_as_the_block_ends():
    with pytest.raises(Stopped) as caught, stop_on_signals():
        obj = _SignalsInDel()
        del obj
    assert caught.value.exit_status == 143 and "finished" in caught.value.note


def test_other_unraisable_exceptions_still_reach_the_previous_hook():
    class Fails:
        def __del__(self):
            raise ValueError("from a finalizer")

    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, lambda u: seen.append(u.exc_value)
    try:
        with stop_on_signals():
            obj = Fails()
            del obj
            raise_if_stopped()  # nothing to raise
    finally:
        sys.unraisablehook = previous
    assert [type(e) for e in seen] == [ValueError]


def test_raise_if_stopped_is_a_no_op_outside_a_block_and_without_a_signal():
    raise_if_stopped()
    with stop_on_signals():
        raise_if_stopped()
