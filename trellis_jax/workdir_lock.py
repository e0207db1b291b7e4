"""One writer per working directory (a training workdir, a build-data --out): `DIR/LOCK` names the
holder (host, pid, start time).

    with WorkdirLock(workdir):      # WorkdirLockedError naming the holder if another run holds it
        ...write into workdir...

The lock is created with O_EXCL, so of two runs started together exactly one gets it. The holder
refreshes the file's mtime every `HEARTBEAT_S` seconds from a daemon thread. A lock is stale (taken
over, with a message) when its holder's process is gone on this host (pid dead, or the pid reused by
a process started later), or, on any host, when its heartbeat is older than `STALE_AFTER_S` (a pod
job relaunched on another machine). Taking over a stale lock is itself guarded by an O_EXCL file,
so two runs cannot both take it. On a multi-host training run only process 0 holds the lock.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirLockedError(RuntimeError):
    """Another live run writes to this workdir."""


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) if fields[0] != "Z" else -1  # field 22 of stat; a zombie counts as dead


def _alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _proc_start_ticks(pid)
    if now == -1:
        return False
    return start_ticks is None or now is None or now == start_ticks


class WorkdirLock:
    def __init__(self, workdir: str | Path, log=print):
        self.path = Path(workdir) / "LOCK"
        self.log = log
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _proc_start_ticks(os.getpid()),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self._stop = threading.Event()
        self._thread = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # vanished, or cut by a crash while being written

    def stale_reason(self, holder: dict | None) -> str | None:
        """Why `holder`'s lock is stale, or None if it may still be live."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it vanished"
        if holder is None:
            return "it is unreadable" if age > HEARTBEAT_S else None  # else: being written right now
        if holder.get("host") == self.me["host"] and not _alive(int(holder.get("pid", -1)), holder.get("start_ticks")):
            return f"process {holder.get('pid')} on this host is gone"
        if age > STALE_AFTER_S:
            return f"its holder has not refreshed it for {age:.0f}s (> {STALE_AFTER_S:.0f}s)"
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.me))
        return True

    def _take_over(self, holder: dict | None, reason: str) -> None:
        guard = self.path.with_name("LOCK.takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if time.time() - guard.stat().st_mtime > STALE_AFTER_S:  # a taker-over died mid-way
                guard.unlink(missing_ok=True)
            return
        os.close(fd)
        try:
            if self._read() == holder and self.stale_reason(holder):  # nobody replaced it meanwhile
                self.log(f"taking over the stale lock {self.path} of {holder} ({reason})")
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self) -> "WorkdirLock":
        for _ in range(5):
            if self._create():
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="workdir-lock")
                self._thread.start()
                return self
            holder = self._read()
            reason = self.stale_reason(holder)
            if reason is None:
                if holder is None:
                    raise WorkdirLockedError(f"{self.path.parent} is being locked by another run right now ({self.path})")
                h = holder
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by pid {h.get('pid')} on host {h.get('host')} (started {h.get('started')}); "
                    f"wait for it, use another directory, or delete {self.path} if that run is gone")
            self._take_over(holder, reason)
            time.sleep(0.05)
        raise WorkdirLockedError(f"{self.path}: could not acquire the lock (contended); retry")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._read() == self.me:
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
