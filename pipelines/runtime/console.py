"""What a person reads: a few lines per stage on the console, everything else in the workspace's logs.

A job's console session points the process's stdout and stderr - file descriptors 1 and 2, so that
C++ logs and library prints are caught too - at a pipe that one thread reads. Each line goes to
`<workspace>/logs/<stage>/<started>.log` (a local file, or uploaded there when the stage ends on
an object store), and to the console as well with `--verbose` or PIPELINES_VERBOSE=1. Our own
lines go to the console directly (`say`).

Training runs in Ray workers, possibly on other nodes. Rank 0 writes its lines for a person to its
stdout with a marker (`emit`); Ray forwards worker output to the driver from every node, and the
thread above renders the marked lines: as they are without a TTY, as a live tqdm bar on one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

VERBOSE_ENV = "PIPELINES_VERBOSE"
MARK = "\x1e@console "  # starts a rank's line for a person inside forwarded worker output
END = "end"  # after MARK: the last line of a session, which the pump waits for
PIPELINE_LOG = "pipeline"  # the log of what happens outside any stage (start, planning, summary)

_ACTIVE: Console | None = None


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def say(line: str) -> None:
    """A line for a person: on the session's console, or plain stdout outside a session."""
    if _ACTIVE is not None:
        _ACTIVE.say(line)
    else:
        print(line, flush=True)


def emit(text: str, progress: dict[str, Any] | None = None) -> None:
    """A line for a person from inside a Ray worker (rank 0 of a training run): marked in its stdout
    for the driver's console, which shows `text`, or moves a live bar to `progress` on a TTY
    ({label, step, total, postfix}). Not print(): Ray Train patches it in workers."""
    if _ACTIVE is not None:  # the same process as the console (a local run): no forwarding needed
        _ACTIVE.render({"text": text, "progress": progress})
        return
    sys.stdout.write(MARK + json.dumps({"text": text, "progress": progress}) + "\n")
    sys.stdout.flush()


def library_output_on_terminal() -> bool:
    """Whether library output (Ray Data's progress bars) reaches a terminal: in a session only with
    --verbose, since it otherwise goes to the log file, where redrawn bars are noise."""
    if _ACTIVE is not None:
        return _ACTIVE.verbose and _ACTIVE.tty
    return sys.stderr.isatty()


@contextmanager
def session(ws, verbose: bool = False):
    """The console of one job; nested sessions are the outer one."""
    global _ACTIVE
    if _ACTIVE is not None:
        yield _ACTIVE
        return
    console = Console(ws, verbose)
    _ACTIVE = console
    try:
        console.start()
        yield console
    finally:
        _ACTIVE = None
        console.stop()


@contextmanager
def stage_log(stage: str):
    """Route the captured output to `logs/<stage>/` while the block runs (no-op outside a session)."""
    if _ACTIVE is None:
        yield
        return
    with _ACTIVE.log_to(stage):
        yield


class Console:
    def __init__(self, ws, verbose: bool):
        self.ws, self.verbose = ws, verbose
        self.started = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.lock = threading.RLock()
        self.bars: dict[str, Any] = {}
        self.log: _LogFile | None = None
        self.tty = False
        self.drained = threading.Event()  # the pump has read the END line that stop() wrote

    # --- lifetime ----------------------------------------------------------------------------
    def start(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        self.err_fd = os.dup(2)
        self.tty = self.out.isatty()
        read_fd, self.write_fd = os.pipe()
        os.dup2(self.write_fd, 1)
        os.dup2(self.write_fd, 2)
        self.line_buffered = getattr(sys.stdout, "line_buffering", None)
        if self.line_buffered is not None:  # a pipe now: lines must reach the log as they come
            sys.stdout.reconfigure(line_buffering=True)
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # plain text in the log files
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.log = _LogFile(self.ws, PIPELINE_LOG, self.started)
        where = f"logs: {self.ws.full_uri('logs')}/<stage>/{self.started}.log"
        self.say(where if self.verbose else f"{where} (--verbose shows them here too)")
        self.reader = threading.Thread(target=self._pump, args=(read_fd,), name="console-pump", daemon=True)
        self.reader.start()

    def stop(self) -> None:
        """Give the process its own stdout/stderr back, once the pump has read all it wrote. Later
        output from child processes that inherited the pipe (Ray's daemons) goes to stderr."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.write(1, f"{MARK}{END}\n".encode())
        self.drained.wait(timeout=30)
        os.dup2(self.out.fileno(), 1)
        os.dup2(self.err_fd, 2)
        os.close(self.write_fd)
        if self.line_buffered is not None:
            sys.stdout.reconfigure(line_buffering=self.line_buffered)
        with self.lock:
            self._close_bars()
            self.log.close()
            self.log = None

    @contextmanager
    def log_to(self, stage: str):
        with self.lock:
            outer, self.log = self.log, _LogFile(self.ws, stage, self.started)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            with self.lock:
                self._close_bars()
                self.log.close()
                self.log = outer

    # --- output ------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        with self.lock:
            if self.log is not None:
                self.log.write(line + "\n")
            self._to_console(line)

    def render(self, event: dict[str, Any]) -> None:
        """A marked line: its text, or on a TTY the live bar it moves."""
        progress = event.get("progress")
        with self.lock:
            if self.log is not None:
                self.log.write(event["text"] + "\n")
            if progress is None or not self.tty:
                self._to_console(event["text"])
                return
            bar = self.bars.get(progress["label"])
            if bar is None:
                from tqdm import tqdm

                sized = _columns(self.out) > 0  # a pty nobody sized reports 0 columns: no bar at all
                bar = tqdm(
                    total=progress["total"],
                    initial=progress["step"],  # its rate counts from the first report on
                    desc=f"[{progress['label']}]",
                    unit="step",
                    file=self.out,
                    dynamic_ncols=sized,
                    ncols=None if sized else 100,
                )
                self.bars[progress["label"]] = bar
            bar.total = progress["total"]  # a time budget's step count is an estimate that moves
            bar.update(progress["step"] - bar.n)
            bar.set_postfix_str(progress["postfix"], refresh=True)
            if progress["step"] >= progress["total"]:
                bar.close()
                del self.bars[progress["label"]]

    def _to_console(self, line: str, end: str = "\n") -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=self.out, end=end)
        else:
            self.out.write(line + end)

    def _close_bars(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace", newline="") as pipe:
            for line in pipe:
                self._captured(line)

    def _captured(self, line: str) -> None:
        at = line.find(MARK)
        if at >= 0 and line[at + len(MARK) :].strip() == END:
            self.drained.set()
            return
        if at >= 0:
            try:
                event = json.loads(line[at + len(MARK) :])
            except ValueError:
                event = None
            if isinstance(event, dict) and "text" in event:
                self.render(event)
                return
        with self.lock:
            if self.log is None:  # after the session: a child process that kept the pipe
                os.write(2, line.encode("utf-8", "replace"))
                return
            self.log.write(line)
            if self.verbose:  # as it came: a redrawn progress bar ends in "\r", not a newline
                self._to_console(line.rstrip("\n"), end="\n" if line.endswith("\n") else "")


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except OSError:
        return 0


class _LogFile:
    """A stage's log: written locally as it comes, put into the workspace when it closes."""

    def __init__(self, ws, stage: str, started: str):
        self.ws, self.rel = ws, f"logs/{stage}/{started}.log"
        if ws.is_local:
            self.path = Path(ws.path(self.rel))
        else:
            from pipelines.core.cache import cache_root

            self.path = cache_root() / "logs" / ws.root.replace("/", "_") / self.rel
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file: TextIO = open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if not self.ws.is_local:
            self.ws.upload_file(self.path, self.rel)
