"""Child processes of the demo, the tests and the benchmarks: start one in its own process
group with its output in a log file, wait until it answers HTTP, stop the whole group.

A process group, because ``mlflow server`` and ``churn-platform serve`` start children of
their own (gunicorn/uvicorn workers, the inference-log writer) that must not outlive them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


class ProcessFailed(RuntimeError):
    """A child exited early or never answered; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now, below the
    kernel's ephemeral range: a port from it can become an outgoing connection's source port
    in the seconds before the server binds it (an MLflow server and a restarted PostgreSQL
    each failed with "address already in use" under a busy test run)."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    for _ in range(200):
        port = 20000 + secrets.randbelow(max(low - 20000, 1000))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # all taken: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """A child process in its own session, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the group, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass  # stuck in the kernel: nothing more a signal can do
        except ProcessLookupError:
            pass


def start(
    name: str, cmd: list[str], log_dir: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Process:
    """Start ``cmd`` in a new session; stdout and stderr go to ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return Process(name, proc, log_path)


def wait_http(
    process: Process, url: str, timeout: float = 120, ok: Callable[[int], bool] = lambda status: status < 500
) -> None:
    """Poll ``url`` until ``ok(status)``; ``ProcessFailed`` (and the process stopped) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise ProcessFailed(f"{process.name} exited early (see {process.log_path}):\n{process.log_tail()}")
        try:
            if ok(httpx.get(url, timeout=2).status_code):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.stop()
    raise ProcessFailed(f"{process.name} did not answer {url} in {timeout:.0f}s:\n{process.log_tail()}")


def start_api(env: dict[str, str], log_dir: Path, bin_dir: Path, cwd: Path | None = None) -> tuple[Process, str]:
    """A real ``churn-platform serve`` (uvicorn) on a free loopback port, answering /health."""
    port = free_port()
    cmd = [str(bin_dir / "churn-platform"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = start(f"api_{port}", cmd, log_dir, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/health", timeout=60)
    return proc, url


def wait_ready(url: str, timeout: float = 60) -> None:
    """Wait until the API at ``url`` serves a model (``/ready`` answers 200)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last = response.text[:500]
        time.sleep(0.3)
    raise ProcessFailed(f"API at {url} not ready after {timeout:.0f}s: {last}")
