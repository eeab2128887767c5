"""What each logging sink costs pymavis in CPU per message, straight to the milter (no Postfix).

    .venv/bin/python bench/logging_cost.py                  # ~2 min
    .venv/bin/python bench/logging_cost.py --messages 3000 --rounds 5 --variants off,all

Starts one real `pymavis milter` per variant with the shipped configuration (bench/run.py's
start_pymavis, so the settings are the observe profile's): off (logging off, as shipped),
json (a JSON event per message to a file), sql (the SQL log in SQLite), metrics (the
Prometheus endpoint, not scraped), all (the three together). Each round sends the
pass-through mix (bench/sender.SizeMix) to every variant in turn, from --threads
connections of the tests' milter protocol client, and reads the daemon's CPU from /proc
before and after: the whole process, and per thread. The daemon's Python threads get OS
names (a sitecustomize on its PYTHONPATH calls prctl(PR_SET_NAME) as each thread starts),
so the event writer, the SQL writer and the worker pool show by name; libmilter's
threads are C threads and share the main thread's name ("python"; the snapshot is taken
before the connections close, so their session threads are still there). The order of
the variants rotates from round to round, so each runs early and late.

Prints, per variant, the median over the rounds of CPU ms per message and its difference
from "off", then the per-thread CPU and context switches of the last round. On a shared
machine the CPU figures of one variant spread by 20% from round to round; the context
switches (counts, from /proc/PID/task/TID/status) hardly move, and show the price of the
GIL: each switch is a thread that had to wait for it, or was made to give it up. This is the in-daemon cost only;
the observe profile of bench/run.py is the measurement with Postfix in front (throughput).
Exit status 0, 1 when a message is not answered as expected.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run  # noqa: E402  (puts milter/ and tests/ on sys.path)
import sender  # noqa: E402
from harness.milterclient import MilterClient  # noqa: E402
from harness.net import LOOPBACK, free_port  # noqa: E402

SITECUSTOMIZE = '''\
import ctypes, threading
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_inner = threading.Thread._bootstrap_inner

def _named(self):
    _prctl(15, self.name.encode()[:15], 0, 0, 0)   # PR_SET_NAME
    _inner(self)

threading.Thread._bootstrap_inner = _named
'''


def variants() -> dict[str, tuple[dict, dict]]:
    """(top-level, default-policy) settings per variant name."""
    return {
        "off": ({}, {}),
        "json": ({"event_log": "{target: file}"}, {}),
        "sql": ({"sql_log": "{enabled: true}"}, {}),
        "metrics": ({"metrics": f'{{listen: "127.0.0.1:{free_port()}"}}'}, {}),
        "all": ({"event_log": "{target: file}", "sql_log": "{enabled: true}",
                 "metrics": f'{{listen: "127.0.0.1:{free_port()}"}}'}, {}),
    }


def thread_cpu_s(pid: int) -> dict[tuple[str, str], tuple[float, int]]:
    """{(tid, name): (utime + stime, context switches)} of each live thread."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                data = fh.read()
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                status = fh.read()
        except FileNotFoundError:
            continue
        name = data[data.index("(") + 1:data.rindex(")")]
        fields = data.rpartition(")")[2].split()
        switches = sum(int(m) for m in re.findall(r"(?m)^(?:non)?voluntary_ctxt_switches:\s*(\d+)", status))
        out[(tid, name)] = ((int(fields[11]) + int(fields[12])) / run.CLK_TCK, switches)
    return out


def by_group(before: dict, after: dict) -> dict[str, tuple[float, int]]:
    """(CPU seconds, context switches) between two thread_cpu_s snapshots, summed per thread
    name without its number (a thread that ended in between is not in `after`: not counted)."""
    groups: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for key, (cpu, switches) in after.items():
        cpu0, switches0 = before.get(key, (0.0, 0))
        group = groups[re.sub(r"[-_]?\d+$", "", key[1])]
        group[0] += cpu - cpu0
        group[1] += switches - switches0
    return {name: tuple(v) for name, v in groups.items()}


def send(port: int, mix, order: list[int], first: int, threads: int, before_close=lambda: None) -> int:
    """Send the messages of `order` from `threads` connections; the number not accepted.
    `before_close` runs once every message is answered and before the connections close
    (libmilter's session threads end with them: a snapshot taken then still sees them)."""
    bad = collections.Counter()
    answered = threading.Barrier(threads + 1)
    closing = threading.Event()

    def one_thread(k: int):
        try:
            with MilterClient(LOOPBACK, port) as client:
                for i in range(k, len(order), threads):
                    mail_from, rcpt, data = mix.message(order[i], first + i)
                    result = client.send_message(data, mail_from=mail_from, rcpts=[rcpt])
                    if result.action not in ("accept", "continue"):
                        bad[result.action] += 1
                answered.wait(600)
                closing.wait(600)
        except threading.BrokenBarrierError:
            pass
        except Exception:
            answered.abort()
            raise

    workers = [threading.Thread(target=one_thread, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    try:
        answered.wait(600)
        before_close()
    finally:
        closing.set()
        for w in workers:
            w.join()
    if bad:
        print(f"logging_cost: answers other than accept: {dict(bad)}", file=sys.stderr)
    return sum(bad.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per variant and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--threads", type=int, default=10, help="milter connections (default 10)")
    parser.add_argument("--warmup", type=int, default=200, help="messages before the first round (default 200)")
    parser.add_argument("--variants", default="off,json,sql,metrics,all",
                        help="comma-separated, from: off, json, sql, metrics, all")
    args = parser.parse_args(argv)
    settings = variants()
    names = args.variants.split(",")
    if "off" not in names or not set(names) <= set(settings):
        parser.error(f"--variants: from {', '.join(settings)}, including off")
    mix = sender.SizeMix(seed=1)
    shares = [share for _, share in mix.classes]
    msg_no = 0
    bad = 0
    with tempfile.TemporaryDirectory(prefix="pymavis-logcost-") as tmp:
        workdir = Path(tmp)
        (workdir / "site").mkdir()
        (workdir / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        daemons = {}
        try:
            for name in names:
                top, policy = settings[name]
                daemons[name] = run.start_pymavis(workdir, "inet", f"logcost-{name}", top=top, policy=policy,
                                                  why=f"logging_cost {name}", pythonpath=(str(workdir / "site"),))
            for name, (child, addr) in daemons.items():
                bad += send(addr.port, mix, sender.plan(args.warmup, 0, shares), msg_no, args.threads)
                msg_no += args.warmup
            per_msg: dict[str, list[float]] = {n: [] for n in names}
            threads_last: dict[str, dict[str, float]] = {}
            for rnd in range(args.rounds):
                order = sender.plan(args.messages, rnd + 1, shares)
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    child, addr = daemons[name]
                    time.sleep(1.0)     # the writers' last batch of the previous phase is written
                    cpu0, threads0, t0 = run.proc_cpu_s(child.pid), thread_cpu_s(child.pid), time.monotonic()
                    after = {}

                    def snapshot():
                        after["wall"] = time.monotonic() - t0
                        time.sleep(1.0)     # this phase's last batch
                        after["cpu"] = run.proc_cpu_s(child.pid) - cpu0
                        after["threads"] = thread_cpu_s(child.pid)

                    bad += send(addr.port, mix, order, msg_no, args.threads, before_close=snapshot)
                    wall, cpu = after["wall"], after["cpu"]
                    threads_last[name] = by_group(threads0, after["threads"])
                    msg_no += args.messages
                    per_msg[name].append(cpu * 1000 / args.messages)
                    print(f"round {rnd + 1} {name:8} {cpu * 1000 / args.messages:6.3f} ms CPU/msg, "
                          f"{args.messages / wall:6.0f} msg/s", flush=True)
        finally:
            for child, _ in daemons.values():
                child.stop()
    base = statistics.median(per_msg["off"])
    print(f"\n{args.messages} messages x {args.rounds} rounds, {args.threads} connections; "
          "pymavis CPU per message (median of rounds):")
    for name in names:
        med = statistics.median(per_msg[name])
        print(f"  {name:8} {med:6.3f} ms  ({med - base:+.3f} vs off)  rounds: "
              + " ".join(f"{v:.3f}" for v in per_msg[name]))
    groups = sorted({g for t in threads_last.values() for g in t})
    for title, k, scale, spec in (("ms CPU per message", 0, 1000, "{:9.3f}"),
                                  ("context switches per message (voluntary + not)", 1, 1, "{:9.1f}")):
        print(f"\nper thread, last round, {title}:")
        print("  " + " " * 16 + "".join(f"{n:>9}" for n in names))
        for g in groups:
            print(f"  {g[:16]:16}" + "".join(spec.format(threads_last[n].get(g, (0.0, 0))[k] * scale / args.messages)
                                           for n in names))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
