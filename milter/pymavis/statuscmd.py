"""`pymavis status` (amavisd-nanny) and `pymavis stats` (amavisd-agent): ask the running
milter over its control socket (control.py) and print the answer.

status: one line per open milter connection, oldest first: its log id (as in the log
lines), age since the connection opened, busy time (since MAIL FROM of the message not yet
answered; '-' when idle), time since its last step, mail_id, and the trail of steps
(progress.py: A m r d = D V S Q .). A connection busy for `--stuck-s` seconds or more is
marked '!' and STUCK (in red on a terminal). The head line says how many of the messages
checking wait for a free worker (milter.workers all busy), when any do.

stats: the counters since start (metrics.py's), each with its rate per hour of uptime and
its share of the counter named in parentheses (InMsgs for most, as amavisd-agent prints
them: OpsDecBy<Decoder> too), then the virus names seen most often.

`--watch [SECONDS]` asks again every SECONDS (default WATCH_DEFAULT_S), redrawing in place
on a terminal; a milter that does not answer is shown as such and asked again. Ctrl-C ends.
`--json` prints the milter's answer as it came.

Exit codes: 0; 1 when the milter could not be asked (or the configuration is bad).
"""

from __future__ import annotations

import json
import os
import sys
import time

from .control import ControlError, ask, socket_path

WATCH_DEFAULT_S = 2.0
STUCK_DEFAULT_S = 60.0
TOP_DEFAULT = 10

_CLEAR = "\x1b[H\x1b[2J"
_RED, _RESET = "\x1b[1;31m", "\x1b[0m"


def duration(seconds: float | None) -> str:
    """12.3s, 4m05s, 2h13m, 3d04h; '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _head(answer: dict) -> str:
    return f"pymavis {answer.get('version', '?')}, pid {answer.get('pid', '?')}, up {duration(answer.get('uptime_s'))}"


def render_status(answer: dict, stuck_s: float = STUCK_DEFAULT_S, *, color: bool = False) -> str:
    entries = answer.get("entries", [])
    stuck = [e for e in entries if e.get("busy_s") is not None and e["busy_s"] >= stuck_s]
    waiting = answer.get("waiting", 0)
    queued = f" ({waiting} waiting for a worker)" if waiting else ""
    lines = [f"{_head(answer)}; {len(entries)} connection(s), {answer.get('in_flight', 0)} message(s) checking"
             f"{queued}, {len(stuck)} stuck (busy {duration(stuck_s)} or more)"]
    if not entries:
        lines.append("  no connections")
        return "\n".join(lines) + "\n"
    lines.append(f"  {'LOG_ID':<14} {'AGE':>7} {'BUSY':>7} {'STATE':>7}  {'MAIL_ID':<12}  TRAIL")
    for e in entries:
        is_stuck = e in stuck
        line = (f"{'!' if is_stuck else ' '} {e['log_id']:<14} {duration(e['age_s']):>7} {duration(e['busy_s']):>7} "
                f"{duration(e['state_s']):>7}  {e.get('mail_id') or '-':<12}  {e['trail']}")
        if is_stuck:
            line += "  STUCK"
            if color:
                line = f"{_RED}{line}{_RESET}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def render_stats(answer: dict, top: int = TOP_DEFAULT) -> str:
    counters, bases = answer.get("counters", {}), answer.get("bases", {})
    hours = max(answer.get("uptime_s", 0.0), 1.0) / 3600
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(answer.get("started", 0)))
    lines = [f"{_head(answer)} (since {since})", ""]
    for name, value in counters.items():
        base = bases.get(name)
        line = f"{name:<28} {value:>10} {value / hours:>10.1f}/h"
        if base is not None:
            of = counters.get(base, 0)
            pct = f"{value * 100 / of:6.1f} %" if of else "     - %"
            line += f"  {pct} ({base})"
        lines.append(line)
    viruses = answer.get("virus_names", [])[:top]
    lines.append("")
    lines.append(f"virus names, top {top}:" if viruses else "virus names: none seen")
    for name, count in viruses:
        lines.append(f"  {name:<40} {count:>8} {count / hours:>10.1f}/h")
    return "\n".join(lines) + "\n"


def _path(args) -> str | None:
    """--socket, else the configuration's control_socket; None (reported) when there is none."""
    if args.socket:
        return args.socket
    from .cli import _load_or_report
    config = _load_or_report(args.config)
    if config is None:
        return None
    path = socket_path(config)
    if path is None:
        print(f"pymavis: {args.config}: control_socket is null, so the milter has no control socket",
              file=sys.stderr)
    return path


def _run(args, command: str, render) -> int:
    path = _path(args)
    if path is None:
        return 1
    if args.json:
        show = lambda answer: json.dumps(answer, indent=2, sort_keys=True) + "\n"   # noqa: E731
    else:
        show = render
    if args.watch is None:
        try:
            answer = ask(path, command)
        except ControlError as exc:
            print(f"pymavis: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(show(answer))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                text = show(ask(path, command))
            except ControlError as exc:
                text = f"pymavis: {exc} (asking again every {args.watch:g} s)\n"
            sys.stdout.write((_CLEAR + text) if tty else (text + "\n"))
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def cmd_status(args) -> int:
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return _run(args, "status", lambda answer: render_status(answer, args.stuck_s, color=color))


def cmd_stats(args) -> int:
    return _run(args, "stats", lambda answer: render_stats(answer, args.top))
