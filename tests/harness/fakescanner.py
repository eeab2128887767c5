"""A fake clamd for the failures a real one will not show on demand.

    with FakeScanner("stall") as fake:                     # or FakeScanner("slow", delay=2)
        ClamdClient(fake.socket_spec, timeout=0.5).ping()  # -> ClamdTimeout

It listens on a loopback TCP port (default) or on a unix socket (`unix_path=`) and treats
every connection by its mode:

| mode            | what the client sees                                                    |
|-----------------|-------------------------------------------------------------------------|
| `stall`         | accepted, then nothing: not read, never answered, never closed           |
| `close`         | closed right after accepting, before reading anything                  |
| `close_after_command` | the command (and INSTREAM data / FILDES descriptor) read, then closed |
| `reply`         | the command read, then `reply` sent and the connection closed           |
| `garbage`       | the command read, then "HELLO\\0" and closed                            |
| `half`          | the command read, then the first half of `reply` (no NUL) and closed    |
| `slow`          | the command read, `delay` seconds of silence, then `reply` and closed    |
| `trickle`       | the command read, then `reply` one byte every `delay` seconds           |

With `ok_first=N` the first N connections are served as in mode `reply` whatever the mode
(a scanner that answers some scans, then fails: the virus check's method parts sends one
stream per part).

"The command read" means up to its NUL; for zINSTREAM also every chunk up to the
zero-length one (at most MAX_STREAM_BYTES, then the connection is closed), for zFILDES
the byte carrying the descriptor (closed at once). What was received is kept in `commands`
(bytes of each command, e.g. b"zINSTREAM") and `stream_bytes`; `accepted` counts connections.

Limits, with their reason: at most MAX_CONNECTIONS handler threads (a runaway test must not
exhaust the machine; connections over it are closed at once), MAX_STREAM_BYTES per stream,
and `stop()` ends every thread: stalled connections wait on the stop event, not forever.
Loopback only.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from .net import LOOPBACK

MODES = ("stall", "close", "close_after_command", "reply", "garbage", "half", "slow", "trickle")
MAX_CONNECTIONS = 64
MAX_STREAM_BYTES = 64 * 1024 * 1024
MAX_COMMAND_BYTES = 1024
JOIN_TIMEOUT_S = 10.0


class FakeScanner:
    def __init__(self, mode: str, *, reply: bytes = b"stream: OK\0", delay: float = 0.0,
                 unix_path: str | None = None, ok_first: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.mode = mode
        self.reply = reply
        self.delay = delay
        self.unix_path = unix_path
        self.ok_first = ok_first
        self.commands: list[bytes] = []
        self.stream_bytes = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeScanner":
        if self.unix_path is not None:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.unix_path)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((LOOPBACK, 0))
        listener.listen(MAX_CONNECTIONS)
        listener.settimeout(0.1)    # the accept loop looks at the stop event this often
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"fakescanner-{self.mode}")
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT_S)     # no new handlers after this
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.unix_path is not None and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self) -> "FakeScanner":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._listener is None or self.unix_path is not None:
            raise RuntimeError("no TCP listener")
        return self._listener.getsockname()[1]

    @property
    def socket_spec(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"inet:{LOOPBACK}:{self.port}"

    # connections -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                mode = "reply" if self.accepted <= self.ok_first else self.mode
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, mode), daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        try:
            conn.settimeout(1.0)
            self._handle(conn, mode)
        except OSError:
            pass    # the client went away or stop() shut the socket: nothing to report
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._slots.release()

    def _handle(self, conn: socket.socket, mode: str) -> None:
        if mode == "stall":
            self._stop.wait()
            return
        if mode == "close":
            return
        if not self._read_command(conn):
            return
        if mode == "close_after_command":
            return
        if mode == "garbage":
            conn.sendall(b"HELLO\0")
        elif mode == "reply":
            conn.sendall(self.reply)
        elif mode == "half":
            conn.sendall(self.reply.rstrip(b"\0")[: max(1, len(self.reply) // 2)])
        elif mode == "slow":
            if not self._stop.wait(self.delay):
                conn.sendall(self.reply)
        elif mode == "trickle":
            for i in range(len(self.reply)):
                if self._stop.wait(self.delay):
                    return
                conn.sendall(self.reply[i:i + 1])

    def _read_command(self, conn: socket.socket) -> bool:
        """Read one z-command and what belongs to it; False if the client went away."""
        command = b""
        while not command.endswith(b"\0"):
            data = self._recv(conn, 1)
            if not data or len(command) > MAX_COMMAND_BYTES:
                return False
            command += data
        command = command[:-1]
        with self._lock:
            self.commands.append(command)
        if command == b"zINSTREAM":
            return self._read_stream(conn)
        if command == b"zFILDES":
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 4)
            for fd in fds:
                os.close(fd)
        return True

    def _read_stream(self, conn: socket.socket) -> bool:
        total = 0
        while True:
            head = self._recv_exactly(conn, 4)
            if head is None:
                return False
            (length,) = struct.unpack(">I", head)
            if length == 0:
                return True
            total += length
            if total > MAX_STREAM_BYTES:
                return False
            while length:
                data = self._recv(conn, min(length, 65536))
                if not data:
                    return False
                length -= len(data)
                with self._lock:
                    self.stream_bytes += len(data)

    def _recv_exactly(self, conn: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            more = self._recv(conn, n - len(data))
            if not more:
                return None
            data += more
        return data

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        """recv that gives up (b"") when the fake is stopped; waits otherwise."""
        while not self._stop.is_set():
            try:
                return conn.recv(n)
            except TimeoutError:
                continue
        return b""
