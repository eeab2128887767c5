"""What keeping a blocked message costs, in process: wall milliseconds per message, no MTA.

    .venv/bin/python bench/keep_cost.py            # ~10 s
    .venv/bin/python bench/keep_cost.py --reps 500 --method sql

Runs pymavis.pipeline.process on a small message with a banned .exe (the shipped
policy: BANNED, destiny discard) with and without keeping it (`keep_blocked`, what the
milter does and what `pymavis scan` does), alternating the two in rounds so both see the
same disk, and prints the median and p99 wall time of each. The difference is the cost
of "kept before the sender is told no": the file store's fsyncs and the index commit
(SQLite under a temp state_dir; `--method sql` keeps the bytes in the database instead
of a file). Wall time, because fsync waits are not CPU. Exit status 0, 1 on an exception.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "milter"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness.samples import pe  # noqa: E402

from pymavis import pipeline  # noqa: E402
from pymavis.config import load  # noqa: E402
from pymavis.policy import merge  # noqa: E402
from pymavis.transaction import Connection, Rcpt, TransactionBuilder  # noqa: E402


def banned_message() -> bytes:
    body = base64.encodebytes(pe()).decode().replace("\n", "\r\n")
    return ("From: a@example.org\r\nSubject: keep cost\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
            '--b\r\nContent-Type: application/octet-stream; name="run.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + body + "--b--\r\n").encode()


def transaction(raw: bytes):
    conn = Connection("bench", "192.0.2.1", 40000, "client.example", "client.example", (), time.monotonic())
    builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 1 << 20, None)
    builder.rcpts = [Rcpt("<b@example.com>", "b@example.com")]
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        builder.add_header(name.decode(), value.decode().strip(), line + b"\r\n")
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("BENCH1", {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="messages per round and mode (default 200)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", choices=("local", "sql"), default="local")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pymavis-keep-bench-") as state:
        return run(args, state)


def run(args, state: str) -> int:
    path = os.path.join(state, "pymavis.yaml")
    with open(path, "w") as fh:
        fh.write(f"state_dir: {state}\nmydomain: example.com\npolicy: {{quarantine_method: {{BANNED: {args.method}}}}}\n")
    config = load(path)
    policy = merge(config, ())
    raw = banned_message()
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for keep in (False, True):
            for _ in range(args.reps):
                txn = transaction(raw)
                t0 = time.perf_counter()
                pipeline.process(config, policy, txn, keep_blocked=keep)
                times[keep].append((time.perf_counter() - t0) * 1000)
                txn.spool.close()
    for keep, label in ((False, "not kept (pymavis scan)"), (True, f"kept ({args.method} + SQLite index)")):
        got = sorted(times[keep])
        print(f"{label:<34} median {statistics.median(got):6.2f} ms  p99 {got[int(len(got) * 0.99) - 1]:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
