"""The virus profile's clamd: started for the run, screening the corpus, and scanned alone.

bench/run.py's virus profile sends bench/messages.py's VIRUS_MIX (the decode mix with 3%
infected messages) through Postfix alone, the null milter and pymavis with clamd (zFILDES,
zINSTREAM, and method parts: each decoded part by zINSTREAM), and scans the same messages with clamd alone: our ClamdClient
(milter/pymavis/clamd.py) streaming each message's bytes with zINSTREAM, at the same
concurrency and from the same worker processes and threads as bench/sender.py (its
`run_load`), no Postfix and no milter. That is the ceiling for any design that hands every
message to clamd: clamd's own CPU per message, on the same cores.

clamd: one tests/harness/clamd.py ClamdProcess for the whole profile (its test database:
the EICAR body signature and the md5 of clamav-testfiles' clam.exe, nothing downloaded),
reached on its unix socket, with CLAMD_SETTINGS over the harness defaults:
  MaxThreads 2        scanning is CPU-bound and the machine has 2 cores; measured at
                      concurrency 20 (600 messages of the mix, 2026-11-22): 2, 4 and 8
                      threads within 5% of each other (147-160 scans/s), 2 the best;
  StreamMaxLength 25M as Debian's clamd.conf; the largest message of the mix is 5.3 MB
                      (start_clamd checks that the mix fits);
  DisableCache yes    (unless --clamd-cache) clamd keeps the md5 of every clean object it
                      has scanned and skips it when seen again. The mix has only 4 bodies
                      per class (the 5 MB classes 2), so with the cache every attachment
                      after the first few is skipped, which real mail, whose attachments
                      rarely repeat, does not get: 263 against 140 scans/s, 6.8 against
                      11.6 ms clamd CPU per message (same measurement).
clamd dies with the benchmark (the harness starts it with PR_SET_PDEATHSIG), and
bench/run.py stops it (by its PID, SIGTERM) with the profile's other processes.

Checks that make a wrong figure fail the run instead:
  - clamd alone: every message of an infected class must be reported with its class's
    signature, and no other message with anything but the "could not look inside"
    heuristics (Heuristics.Encrypted.*, Heuristics.Limits.*; pymavis makes those
    UNCHECKED and passes them); a scan error or timeout fails the transaction;
  - the corpus share is screened once before the phases: a corpus message clamd reports
    (other than those heuristics) is left out of the mix and named in the report, so the
    infected count of every phase is known in advance (bench/run.py checks pymavis'
    "Passed INFECTED" lines against it).

Where clamd's time goes: `clamd_cost` scans messages of every class one at a time before
the phases (the machine idle) and reports clamd's CPU per message by class.

Limits: the client's connect timeout 3 s and scan timeout SCAN_TIMEOUT_S (a 5 MB message
scans in ~0.25 s here); every phase is bounded by bench/run.py's phase timeout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import messages
import sender
from harness.clamd import ClamdProcess, reported

from pymavis.clamd import ClamdClient, ClamdError, is_heuristic_unchecked

CLAMD_SETTINGS = {"MaxThreads": "2", "StreamMaxLength": "25M"}
COST_REPS, COST_REPS_BIG = 60, 6    # clamd_cost: ~6 s on 2 cores
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_MAX_BYTES = 25 * 1024 * 1024
SCAN_TIMEOUT_S = 60.0

# What the pymavis variants add to the shipped configuration. Infected messages are passed
# (delivered, tagged) instead of discarded, so that every message reaches the sink and the
# run can check that none was lost; a zipped clam.exe is also BANNED (a Windows executable
# by content), hence the banned destiny too. Every check still runs in full: the destinies
# only decide what happens after.
POLICY = {"final_virus_destiny": "pass", "final_banned_destiny": "pass"}


def scanners_yaml(socket_spec: str, method: str) -> str:
    """The av_scanners value (YAML flow style) for one clamd."""
    return f'[{{name: clamd, socket: "{socket_spec}", method: {method}, timeout_s: {SCAN_TIMEOUT_S:g}}}]'


def start_clamd(workdir: Path, *, cache: bool, largest_message: int) -> ClamdProcess:
    """A started ClamdProcess in workdir, with CLAMD_SETTINGS (and DisableCache unless
    `cache`). Raises RuntimeError or TimeoutError when clamd does not come up."""
    if largest_message > STREAM_MAX_BYTES:
        raise ValueError(f"the mix has a {largest_message}-byte message, over clamd's "
                         f"StreamMaxLength {STREAM_MAX_BYTES}")
    settings = dict(CLAMD_SETTINGS)
    if not cache:
        settings["DisableCache"] = "yes"
    clamd = ClamdProcess(str(workdir), **settings)
    return clamd.start()   # the harness makes clamd die with us (PR_SET_PDEATHSIG)


def unexpected(names: tuple[str, ...], virus: str | None) -> str | None:
    """What is wrong with a verdict for a message that must carry `virus` (None: none)."""
    if virus is not None:
        return None if reported(virus) in names else f"expected {reported(virus)}, clamd said {names or 'OK'}"
    found = [n for n in names if not is_heuristic_unchecked(n)]
    return f"clean message reported as {', '.join(found)}" if found else None


def screen_corpus(client: ClamdClient, files: list[Path]) -> tuple[list[Path], list[str]]:
    """(the corpus files clamd reports nothing in, "name: verdict" of those left out)."""
    kept, left_out = [], []
    for path in files:
        reply = client.instream(messages.unstuffed(messages.smtp_data(path.read_bytes())))
        problem = unexpected(reply.infected, None)
        if problem:
            left_out.append(f"{path.name}: {', '.join(reply.infected)}")
        else:
            kept.append(path)
    return kept, left_out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds; resolution one clock tick (10 ms)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def clamd_cost(client: ClamdClient, pid: int, mix: messages.DecodeMix, reps: int = COST_REPS,
               reps_big: int = COST_REPS_BIG) -> list[dict]:
    """clamd's CPU per message by class of the mix, one scan at a time (zINSTREAM, no other
    load: what clamd itself costs, without the contention of concurrent scans). `reps`
    messages per class (5 MB classes: `reps_big`), the corpus share once per message;
    clamd's CPU from /proc over the whole class (n x the per-message cost against one 10 ms
    tick). One unmeasured scan first. Every verdict is checked as in ScanAlone."""
    rows = []
    for idx, cls in enumerate(mix.mix):
        if cls.size is None:
            batch = [messages.unstuffed(m) for m in mix.corpus]
        else:
            n = reps_big if cls.size >= messages.MB else reps
            batch = [messages.unstuffed(mix.message(idx, msg_no)[2]) for msg_no in range(n)]
        client.instream(batch[0])
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        for data in batch:
            problem = unexpected(client.instream(data).infected, cls.virus)
            if problem:
                raise ValueError(f"{cls.label}: {problem}")
        wall, cpu = time.monotonic() - t0, proc_cpu_s(pid) - cpu0
        rows.append({"class": cls.label, "share": cls.share, "n": len(batch),
                     "bytes": round(sum(map(len, batch)) / len(batch)),
                     "clamd_cpu_ms": cpu * 1000 / len(batch), "wall_ms": wall * 1000 / len(batch)})
    return rows


class ScanAlone:
    """bench/sender.py's `send` for clamd alone: one zINSTREAM of the message's bytes,
    checked against its class; (start, end) are the scan's, the un-stuffing is outside."""

    def __init__(self, socket_spec: str, mix: messages.DecodeMix):
        self.socket_spec, self.mix = socket_spec, mix
        self.client: ClamdClient | None = None   # made in the worker process (after fork)

    def __call__(self, class_idx: int, mail_from: str, rcpt: str, data: bytes) -> tuple[float, float]:
        if self.client is None:
            self.client = ClamdClient(self.socket_spec, timeout=SCAN_TIMEOUT_S)
        data = messages.unstuffed(data)
        start = time.monotonic()
        try:
            reply = self.client.instream(data)
        except ClamdError as exc:
            raise sender.TransactionFailed("scan", f"{type(exc).__name__}: {exc}") from None
        end = time.monotonic()
        problem = unexpected(reply.infected, self.mix.virus(class_idx))
        if problem:
            raise sender.TransactionFailed("verdict", f"{self.mix.classes[class_idx][0]}: {problem}")
        return start, end
