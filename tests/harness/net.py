"""Loopback networking helpers for the test harness: free ports and poll-based readiness.

Readiness is always a successful TCP connect (or a predicate), polled with a short interval
and a generous deadline, never a fixed sleep: CI machines have 2 cores and start-up times
vary by a factor of ten under load.

Failure shows as `TimeoutError` naming what was awaited and for how long.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import time
from typing import Callable, Iterator, TypeVar

LOOPBACK = "127.0.0.1"

# Long enough for a Postfix master to start on a loaded 2-core CI machine; tests that
# expect something to happen wait at most this long, so a healthy run never approaches it.
DEFAULT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05

T = TypeVar("T")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0, read, close).

    XXX: another process may take the port between this call and the real bind; on a test
    machine that race is rare enough, and the caller's start-up then fails loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def closed_port(host: str = LOOPBACK) -> Iterator[int]:
    """A port on which connections are refused, for as long as the context lasts.

    The port stays bound (without listen()), so no other socket can take it meanwhile, and
    the kernel cannot hand it out as the source port of a connection to itself (a TCP
    self-connect would "succeed"). A merely free port gives neither guarantee.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        yield s.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = POLL_INTERVAL_S,
    *,
    what: str = "condition",
) -> T:
    """Call `predicate` until it returns a true value; return that value.

    Raises TimeoutError naming `what` if it is still false after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def wait_for_port(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Wait until something accepts TCP connections on host:port."""
    wait_until(lambda: port_is_open(host, port), timeout, what=f"listener on {host}:{port}")


def wait_for_port_closed(host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Wait until nothing accepts TCP connections on host:port any more."""
    wait_until(
        lambda: not port_is_open(host, port), timeout, what=f"{host}:{port} to stop listening"
    )


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies, however it
    dies (a killed test run or benchmark leaves no daemon behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def terminate(proc, timeout: float, what: str, log_text) -> int:
    """SIGTERM our child `proc` and wait for it; its exit status. One that does not exit
    within `timeout` is killed and the test fails, showing `log_text()`."""
    import subprocess
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"{what} did not exit {timeout} s after SIGTERM:\n{log_text()}") from None
    return proc.returncode
