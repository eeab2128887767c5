"""A fake spamd that answers every request with fixed bytes, for the replies a real spamd
will not give on demand (garbage, truncated, oversized).

    with FakeSpamd(b"HELLO\\r\\n") as fake:
        SpamdClient(fake.socket_spec).ping()        # -> SpamdProtocolError

Each connection: the request is read up to the client's half-close (our client always
half-closes; at most MAX_REQUEST_BYTES, and for at most READ_TIMEOUT_S), `reply` is sent,
the connection closed; the requests are kept in `requests`. For a fake that accepts and then
never answers, use FakeScanner("stall"): it does not depend on the protocol. Loopback only;
connections are served one at a time by the accept thread (the backlog, MAX_CONNECTIONS,
holds the rest): the tests that use it send one request at a time.
"""

from __future__ import annotations

import socket
import threading

from .net import LOOPBACK

MAX_CONNECTIONS = 16
MAX_REQUEST_BYTES = 16 * 1024 * 1024
READ_TIMEOUT_S = 5.0


class FakeSpamd:
    def __init__(self, reply: bytes, delay: float = 0.0):
        self.reply, self.delay = reply, delay     # delay: seconds between request and reply
        self.requests: list[bytes] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> "FakeSpamd":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(MAX_CONNECTIONS)
        self._listener.settimeout(0.1)      # the accept loop looks at the stop event this often
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="fakespamd")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S + 1)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> "FakeSpamd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def socket_spec(self) -> str:
        return f"inet:{LOOPBACK}:{self._listener.getsockname()[1]}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        request = b""
        with conn:
            try:
                conn.settimeout(READ_TIMEOUT_S)
                while len(request) <= MAX_REQUEST_BYTES and (data := conn.recv(65536)):
                    request += data
                self.requests.append(request)
                if self.delay:
                    self._stop.wait(self.delay)
                conn.sendall(self.reply)
            except OSError:
                pass    # the client went away: nothing to report
