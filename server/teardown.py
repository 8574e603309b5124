"""`Teardown`: a server's stopping steps under one deadline, so that a step that hangs (a Ray
call, a process that will not join) ends the process with status 1 and a log line naming the
step, instead of a server that never exits."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Teardown:
    """Steps run in turn, each logged with its time. The deadline counts from construction and
    covers the interpreter's exit too (non-daemon threads, atexit hooks); a process that exits
    in time is not held by it. Past it, the process logs what it was waiting on and exits: with
    status 1 from a step, with 0 once `stopped()` said every step finished."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.current = "nothing yet"
        self._exit_status = 1
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def step(self, what: str, fn: Callable[..., object], *args: object) -> None:
        self.waiting_on(what)
        start = time.monotonic()
        fn(*args)
        log.info("%s: done in %.1fs", what, time.monotonic() - start)

    def waiting_on(self, what: str) -> None:
        self.current = what

    def stopped(self) -> None:
        """Every step finished: what is left is the interpreter's own exit."""
        self.waiting_on("the interpreter's exit (threads, atexit hooks) after a clean stop")
        self._exit_status = 0

    def _expire(self) -> None:
        log.log(
            logging.ERROR if self._exit_status else logging.WARNING,
            "stopping took over %.0fs (waiting on %s): exiting without waiting further",
            self.seconds,
            self.current,
        )
        logging.shutdown()  # flush the logs: os._exit skips interpreter teardown
        os._exit(self._exit_status)
