"""A real S3 API server (moto) on 127.0.0.1, for the tests and benchmarks.

Run as a script it binds a port the kernel picks (no race with other servers for a port chosen
earlier), prints that port on stdout and serves until its stdin closes, so it dies with the
process that started it. `start_s3_server` is the parent's side.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path


def start_s3_server(
    log_path: Path, timeout: float = 300.0, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """Start the server; return the process (its own session) and its endpoint URL once it serves.
    `env`: more environment for moto (INITIAL_NO_AUTH_ACTION_COUNT makes it check credentials)."""
    from conftest import wait_http

    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, __file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    log.close()
    try:
        endpoint = f"http://127.0.0.1:{_read_port(proc, timeout)}"
        wait_http(f"{endpoint}/moto-api/", timeout=timeout, proc=proc)
    except Exception as err:
        proc.kill()
        raise RuntimeError(f"S3 server did not start: {err}\n{log_path.read_text()[-3000:]}") from None
    return proc, endpoint


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise RuntimeError(f"no port within {timeout}s (exit code {proc.poll()}, said {line!r})")
    return int(line)


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    started = time.monotonic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    print(f"moto listening on 127.0.0.1:{port} after {time.monotonic() - started:.1f}s", file=sys.stderr)
    print(port, flush=True)
    sys.stdin.read()  # EOF: the parent closed the pipe or died
    server.stop()
    os._exit(0)


if __name__ == "__main__":
    _serve()
