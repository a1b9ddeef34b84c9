"""One refresh at a time per workspace: a lock file that names its owner (host, pid, started).

The file is created exclusively (O_EXCL on a local or mounted workspace, a conditional PUT on S3;
see Workspace.create_exclusive for other object stores). While it holds the
lock, the owner rewrites the file's heartbeat every few seconds, so a refresh that runs for hours
never looks stale. A lock is stale, and taken over with a warning, when its owner is a process that
no longer runs on this host, or its heartbeat is older than `refresh.lock_stale_seconds` (an owner
on another host that died: a crashed pod or VM).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.core.workspace import Workspace
from pipelines.errors import UserError
from pipelines.runtime.console import say

LOCK_FILE = "locks/refresh.lock"


def _warn(message: str) -> None:
    say(f"warning: {message}")  # a person's line: on the console, also in a job's console session


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int | None
    started: str  # UTC, ISO 8601
    heartbeat: float  # time.time() of the owner's last sign of life
    token: str  # tells this owner's file from a later one

    @classmethod
    def me(cls) -> Owner:
        now = time.time()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return cls(socket.gethostname(), os.getpid(), started, now, uuid.uuid4().hex)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class WorkspaceLock:
    """`with WorkspaceLock(ws, stale_seconds):` - a UserError when another live refresh holds it."""

    def __init__(self, ws: Workspace, stale_seconds: float, rel: str = LOCK_FILE, warn=_warn):
        self.ws, self.rel, self.stale_seconds, self.warn = ws, rel, stale_seconds, warn
        self.owner: Owner | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.ws.full_uri(self.rel)

    def __enter__(self) -> WorkspaceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # --- taking and giving back -----------------------------------------------------------------
    def acquire(self) -> None:
        self.ws.makedirs(self.rel.rsplit("/", 1)[0])
        for _ in range(5):
            owner = Owner.me()
            if self._create(owner):
                self.owner = owner
                self._start_heartbeat()
                return
            current = self.read()
            if current is None:  # released, or taken over, since we looked: try again
                continue
            why = self.stale_reason(current)
            if why is None:
                raise UserError(
                    f"another refresh holds the workspace lock {self.uri} ({current.describe()}); "
                    f"it is released when that refresh ends (a dead one's lock is taken over "
                    f"after refresh.lock_stale_seconds={self.stale_seconds:g})"
                )
            self.warn(f"taking over the stale refresh lock {self.uri} ({current.describe()}): {why}")
            self._remove(current)
        raise UserError(f"could not take the workspace lock {self.uri}: other refreshes keep taking it")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        current = self.read()
        if self.owner is not None and current is not None and current.token == self.owner.token:
            self.ws.fs.delete_file(self.ws.path(self.rel))
        self.owner = None

    def read(self) -> Owner | None:
        """The lock's owner; None when there is no lock. A file being written or damaged reads as
        an owner of unknown pid whose heartbeat is the file's modification time."""
        try:
            data = self.ws.read_bytes(self.rel)
        except OSError:  # FileNotFoundError locally; object stores may say it otherwise
            if not self.ws.exists(self.rel):
                return None
            raise
        try:
            return Owner(**json.loads(data))
        except (ValueError, TypeError):
            info = self.ws.fs.get_file_info(self.ws.path(self.rel))
            mtime = info.mtime.timestamp() if info.mtime else 0.0
            return Owner("?", None, "?", mtime, "?")

    def stale_reason(self, owner: Owner) -> str | None:
        if owner.host == socket.gethostname() and owner.pid and not pid_running(owner.pid):
            return f"pid {owner.pid} is not running on this host"
        age = time.time() - owner.heartbeat
        if age > self.stale_seconds:
            return f"no heartbeat for {age:.0f}s (refresh.lock_stale_seconds={self.stale_seconds:g})"
        return None

    # --- the file -------------------------------------------------------------------------------
    def _encode(self, owner: Owner) -> bytes:
        return (json.dumps(asdict(owner), indent=2) + "\n").encode()

    def _create(self, owner: Owner) -> bool:
        return self.ws.create_exclusive(self.rel, self._encode(owner))

    def _remove(self, stale: Owner) -> None:
        """Remove the lock if it is still `stale`'s. Locally the file is first renamed aside (atomic),
        so of two refreshes taking over the same stale lock, only one removes it."""
        path = self.ws.path(self.rel)
        if not self.ws.is_local:  # no atomic rename: a narrow race between the read and the delete
            current = self.read()
            if current is not None and current.token == stale.token:
                self.ws.fs.delete_file(path)
            return
        aside = f"{path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        moved = self.read_at(aside)
        if moved is not None and moved.token != stale.token:  # a fresh lock slipped in: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        os.unlink(aside)

    @staticmethod
    def read_at(path: str) -> Owner | None:
        try:
            with open(path, "rb") as f:
                return Owner(**json.loads(f.read()))
        except (OSError, ValueError, TypeError):
            return None

    def _start_heartbeat(self) -> None:
        interval = max(0.5, min(30.0, self.stale_seconds / 4))
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(interval):
                current = self.read()
                if current is None or self.owner is None or current.token != self.owner.token:
                    self.warn(f"the refresh lock {self.uri} was taken over by another refresh")
                    return
                self.owner = Owner(**{**asdict(self.owner), "heartbeat": time.time()})
                self.ws.write_bytes(self.rel, self._encode(self.owner))

        self._beat = threading.Thread(target=beat, name="refresh-lock-heartbeat", daemon=True)
        self._beat.start()
