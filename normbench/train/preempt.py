"""Preemption: on SIGTERM or SIGUSR1 (SLURM's warning before a time limit), finish the current
step, write a checkpoint, then hand the signal to whoever handled it before (submitit requeues
the job on SIGUSR1; the default action ends the process)."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import NoReturn

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionGuard:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> PreemptionGuard:
        # Signal handlers can only be set from the main thread (e.g. not inside some launchers).
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def exit(self) -> None:
        """Called after the checkpoint is safe: re-deliver the signal to the previous handler."""
        signum = self.received
        self.__exit__()
        hand_on(signum or 0)


def hand_on(signum: int) -> NoReturn:
    """End as the signal's handler says (by default: the process ends by the signal, which tells
    a launcher it was stopped, not failed); SystemExit where that handler returns."""
    if signum:
        os.kill(os.getpid(), signum)
    raise SystemExit(128 + signum)
