"""Preemption: SIGTERM or SIGINT stops a worker at the next checkpoint and hands its job back.

The first signal only sets a flag. The trainer's callback checks it right after writing the
epoch's checkpoint and raises :class:`Preempted`, so no finished epoch is lost; the worker then
returns the job to ``pending`` and exits 0. If no checkpoint comes within
``$V1FABRIK_PREEMPT_TIMEOUT_S`` seconds (default 60), or a second signal arrives, ``Preempted``
is raised at once and the job resumes from its previous checkpoint.

DataJoint's distributed populate installs its own SIGTERM handler (which marks the job
``error``); :func:`guard` puts ours back for the duration of the training. A worker asked to stop
reserves no new job (:mod:`.worker`).
"""
import contextlib
import logging
import signal
import threading
import _thread

from .settings import seconds

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TIMEOUT_ENV = "V1FABRIK_PREEMPT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0


class Preempted(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT); its job goes back to pending."""


_requested = threading.Event()
_installed = False
_timer = None


def requested() -> bool:
    """True once the worker received SIGTERM or SIGINT."""
    return _requested.is_set()


def timeout_s() -> float:
    """Seconds a preempted job may run on to reach its next checkpoint."""
    return seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def _handle(signum, _frame):
    global _timer
    name = signal.Signals(signum).name
    if _requested.is_set():
        raise Preempted(f"{name} received again (or no checkpoint in time): stopping now")
    _requested.set()
    logger.warning("%s received: stopping at the next checkpoint (at most %.0f s)", name, timeout_s())
    # Past the deadline the main thread gets the signal again, which raises Preempted at once.
    _timer = threading.Timer(timeout_s(), _thread.interrupt_main, args=(signum,))
    _timer.daemon = True
    _timer.start()


def install() -> None:
    """Handle SIGTERM and SIGINT in this (worker) process from now on; call from the main thread."""
    global _installed
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    _installed = True


@contextlib.contextmanager
def guard():
    """Our handlers (if :func:`install` ran) for the block, restoring whatever was there before."""
    if not _installed:
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    try:
        checkpoint_reached()
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cancel_deadline() -> None:
    """The job is back in the queue (or the worker stops): the deadline no longer applies."""
    if _timer is not None:
        _timer.cancel()


def checkpoint_reached() -> None:
    """A safe point: raise :class:`Preempted` if the worker was asked to stop."""
    if _requested.is_set():
        raise Preempted("stopped at a checkpoint after SIGTERM/SIGINT; the job resumes from it")
