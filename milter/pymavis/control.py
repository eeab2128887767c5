"""The control socket of the running milter: where `pymavis status` and `pymavis stats` ask.

A unix stream socket at `control_socket` (relative to `state_dir`; default
STATE_DIR/pymavis.ctl; null: none), mode 0600, so only the milter's user (and root) can
ask. One request per connection: a command line ("status" or "stats", at most
REQUEST_MAX_BYTES), answered with one JSON object and a newline, then closed. An unknown
command is answered {"error": ...}. The socket is served by one thread of its own; each
answer is a snapshot taken under a short lock, so asking never holds up mail.

Limits, with their reason: a client gets CLIENT_TIMEOUT_S to send its line (one thread
serves everyone, and a silent client must not block the next); requests are short words.

Failure: a path that cannot be bound (too long for a unix socket: 107 bytes; a folder that
does not exist; another running milter answering there) is logged at start and the milter
runs without the control socket. The socket is made under a temporary name, set to 0600,
then renamed into place, so it is never reachable with looser permissions. A reload does
not move it: a new `control_socket` takes effect at the next start.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid

from .log import log

REQUEST_MAX_BYTES = 64
CLIENT_TIMEOUT_S = 5.0
ACCEPT_POLL_S = 0.5      # how often the serving thread looks whether it should stop
ANSWER_MAX_BYTES = 16 * 1024 * 1024   # what a client reads at most (a few thousand connections' status)


class ControlError(Exception):
    """The milter could not be asked (not running, no control socket, refused)."""


def socket_path(config) -> str | None:
    """Where the control socket is for this configuration; None when it is off."""
    path = config["control_socket"]
    if not path:
        return None
    return os.path.join(config["state_dir"], path)


class ControlServer:
    """Answers commands on a unix socket; `handlers` maps a command to a function returning
    a JSON-able dict."""

    def __init__(self, path: str, handlers: dict):
        self.path = path
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ino = None

    def start(self) -> bool:
        """Bind and serve; False (logged) when the socket cannot be made."""
        try:
            self._sock = self._bind()
        except OSError as exc:
            log.error("control socket %s cannot be opened (%s); running without it (pymavis status and "
                      "pymavis stats will not answer)", self.path, exc.strerror or exc)
            return False
        except ControlError as exc:
            log.error("%s; running without a control socket", exc)
            return False
        self._thread = threading.Thread(target=self._serve, name="pymavis-control", daemon=True)
        self._thread.start()
        log.info("control socket %s (pymavis status, pymavis stats)", self.path)
        return True

    def _bind(self) -> socket.socket:
        if os.path.exists(self.path):
            try:
                ask(self.path, "status", timeout=2.0)
            except ControlError:
                os.unlink(self.path)   # left by a milter that is gone
            else:
                raise ControlError(f"control socket {self.path}: another running pymavis answers there")
        tmp = os.path.join(os.path.dirname(self.path) or ".", f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:8]}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.path)
            sock.listen(16)
            sock.settimeout(ACCEPT_POLL_S)
        except OSError:
            sock.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._ino = os.stat(self.path).st_ino
        return sock

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.error("control socket %s: accept failed: %s", self.path, exc)   # out of descriptors, say
                self._stop.wait(ACCEPT_POLL_S)
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT_S)
        try:
            data = b""
            while b"\n" not in data and len(data) <= REQUEST_MAX_BYTES:
                chunk = conn.recv(REQUEST_MAX_BYTES + 1)
                if not chunk:
                    break
                data += chunk
            command = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
            handler = self.handlers.get(command)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                answer = {"error": f"unknown command {command[:REQUEST_MAX_BYTES]!r} (known: {known})"}
            else:
                try:
                    answer = handler()
                except Exception as exc:   # noqa: BLE001 - a bad answer must not end the serving thread
                    log.exception("control socket: answering %r failed", command)
                    answer = {"error": f"answering {command!r} failed: {type(exc).__name__}: {exc}"}
            conn.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:   # the client went away or stayed silent: its loss
            log.debug("control socket: a client was not answered: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)   # wakes the accept() now (Linux)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(ACCEPT_POLL_S * 4)
            self._thread = None
        try:
            if self._ino is not None and os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def ask(path: str, command: str, *, timeout: float = 10.0) -> dict:
    """The milter's answer to `command`. Raises ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(command.encode("ascii") + b"\n")
            data = b""
            while len(data) <= ANSWER_MAX_BYTES:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise ControlError(f"no control socket at {path}: is the milter running (with control_socket set)?") from None
    except ConnectionRefusedError:
        raise ControlError(f"nobody answers at {path}: the milter is not running (a socket left behind)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the socket is mode 0600: ask as the milter's user "
                           "or root)") from None
    except OSError as exc:
        raise ControlError(f"cannot ask the milter at {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the milter at {path} answered something that is not JSON ({len(data)} bytes)") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the milter at {path} answered {type(answer).__name__}, not an object")
    if "error" in answer:
        raise ControlError(f"the milter at {path}: {answer['error']}")
    return answer
