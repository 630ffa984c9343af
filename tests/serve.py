"""`roi serve` as a child process, for the tests that need the real command: a free port, the
command itself, a start with its output kept in a log file, and the wait for /healthz."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def roi_command() -> list[str]:
    script = Path(sys.executable).with_name("roi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def start_serve(
    port: int,
    env: dict[str, str],
    log: Path,
    *options: str,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """`roi serve --port PORT [options]` with `env`, its output appended to `log`;
    `new_session` puts it in a process group of its own (to kill it with its workers)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*roi_command(), "serve", "--port", str(port), *options],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"roi serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"roi serve did not answer /healthz within 120 s:\n{log.read_text()}")
        time.sleep(0.1)
