"""Stopping a sweep: SIGTERM, SIGINT or SIGHUP to the sweep's process ends every process it
started, and every cell it leaves unfinished resumes on the next run.

The sweep hands SIGTERM to the processes it started (the launcher's workers): a cell's worker
writes a checkpoint after its current step and ends (normbench.train.preempt); torchrun's agent
hands the signal to its ranks, which do the same. What still runs GRACE_S later is killed:
checkpoints are replaced atomically, so a cell killed even while writing one resumes from the
one before. Then :class:`Stopped` unwinds the launcher, and the sweep names the cells it left.

Processes are found in /proc (psutil is not a dependency), not by process group (the sweep
shares its group with the shell's pipeline, e.g. `normbench sweep ... | tee log`): this
process's descendants, and every one seen below it before (a process whose parent ended is
re-parented, not gone). A
process that ignores SIGTERM is left alone: the resource trackers of loky and multiprocessing
do, and end by themselves with the processes they serve (killed, they would leak what they
track). Without /proc (not Linux) only the launcher's own clean-up runs.

Limits: with several cells at once (launcher=parallel on CPUs), loky kills its other workers
as soon as one ends, so those cells resume from their last checkpoint (each epoch, or every
checkpoint_every_steps) rather than from the step the signal came. Cells run elsewhere
(launcher=slurm) keep running, as after Ctrl-C; scancel stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Time for every cell to finish its step and write a checkpoint: a ResNet-50 step and its
# checkpoint take seconds; SLURM's own grace (KillWait) is 30 s, systemd's 90 s.
GRACE_S = 60.0
POLL_S = 0.1
PROC = Path("/proc")


class Stopped(KeyboardInterrupt):
    """Raised in the sweep's main thread once its processes have ended. A KeyboardInterrupt, so
    what already handles Ctrl-C (the launchers, Hydra, joblib) unwinds alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Process:
    parent: int
    start: int  # clock ticks after boot: with the pid, one process (pids are reused)


def _processes() -> dict[int, Process]:
    """Every process that has not ended (zombies count as ended), by pid."""
    found = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the name, which may hold spaces
        if fields[0] != "Z":
            found[int(entry.name)] = Process(parent=int(fields[1]), start=int(fields[19]))
    return found


def _descendants(known: dict[int, Process] | None = None) -> dict[int, Process]:
    """This process's descendants, with those of `known` (processes seen below it before) that
    still run and their descendants."""
    table = _processes()
    found = {pid: table[pid] for pid, p in (known or {}).items()
             if pid in table and table[pid].start == p.start}  # fmt: skip
    children: dict[int, list[int]] = {}
    for pid, p in table.items():
        children.setdefault(p.parent, []).append(pid)
    me = os.getpid()
    stack = [me, *found]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != me:
                found[child] = table[child]
                stack.append(child)
    return found


def _ignores(pid: int, signum: int) -> bool:
    """Whether the process ignores the signal (SigIgn of /proc/<pid>/status)."""
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return False
    mask = next((line.split()[1] for line in lines if line.startswith("SigIgn:")), "0")
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _send(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_processes(grace_s: float, hurry: Callable[[], bool] = lambda: False) -> int:
    """SIGTERM to this process's children, up to `grace_s` seconds (or until `hurry()`) for
    them to end, then SIGKILL to those still running and to every other process below this
    one except those that ignore SIGTERM. Returns how many were killed.

    Children that appear meanwhile are left alone: the launcher's own helpers (loky runs
    pgrep to clean up after a worker that ended)."""
    if not PROC.is_dir():
        return 0
    me, known = os.getpid(), _descendants()
    children = {pid for pid, p in known.items()
                if p.parent == me and not _ignores(pid, signal.SIGTERM)}  # fmt: skip
    _send(list(children), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while children & known.keys() and not hurry() and time.monotonic() < deadline:
        time.sleep(POLL_S)
        known = _descendants(known)
    left = [
        pid
        for pid, p in _descendants(known).items()
        if (pid in children or p.parent != me) and not _ignores(pid, signal.SIGTERM)
    ]
    _send(left, signal.SIGKILL)
    return len(left)


class StopOnSignals:
    """While in effect (the launcher running the cells), SIGTERM, SIGINT or SIGHUP ends the
    processes below this one (:func:`end_processes`), then raises :class:`Stopped`, which the
    block swallows: ``signum`` then says which signal stopped the sweep. A second signal stops
    waiting for the checkpoints: what still runs is killed at once."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self._hurry = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignals:
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType
    ) -> bool:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
        self._previous.clear()
        return isinstance(error, Stopped)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self._hurry = True
            return
        self.signum = signum
        name = signal.Signals(signum).name
        _say(f"{name}: stopping the cells (each writes a checkpoint; what still runs in "
             f"{self.grace_s:.0f} s is killed, or at once on a second signal)")  # fmt: skip
        killed = end_processes(self.grace_s, hurry=lambda: self._hurry)
        if killed:
            _say(f"killed {killed} process(es) that had not ended")
        raise Stopped(signum)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        print(f"normbench: {line}", file=sys.stderr, flush=True)
