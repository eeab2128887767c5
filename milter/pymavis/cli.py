"""The `pymavis` command: run the milter, check a configuration, scan message files
offline, list and release quarantined mail, ask the running milter for its status and
counters, print the version.

Exit codes: 0 success, 1 configuration errors (each printed as FILE:LINE: message),
2 usage errors (argparse). `scan` has its own (scan.py): 0 clean, 1 findings, 2 errors;
`quarantine` and `release` (quarcmd.py): 1 when refused or failed; `status` and `stats`
(statuscmd.py): 1 when the milter cannot be asked.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, statuscmd

_CHECKOUT_CONFIG = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "policies", "pymavis.yaml"))
SYSTEM_CONFIG = "/etc/pymavis/pymavis.yaml"


def default_config() -> str:
    """$PYMAVIS_CONFIG, else the checkout's policies/pymavis.yaml, else /etc/pymavis/pymavis.yaml."""
    env = os.environ.get("PYMAVIS_CONFIG")
    if env:
        return env
    if os.path.exists(_CHECKOUT_CONFIG):
        return _CHECKOUT_CONFIG
    return SYSTEM_CONFIG


def _load_or_report(path: str):
    from .config import ConfigError, load
    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s) in the configuration", file=sys.stderr)
        return None


def cmd_milter(args) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    state_dir = config.settings["state_dir"]
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        print(f"cannot create state_dir {state_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    if not args.foreground:
        _daemonize(os.path.join(state_dir, "pymavis.pid"))
    from . import adapter  # imports pymilter; keep other subcommands free of it
    return adapter.run(config, os.path.abspath(args.config), args.socket, force_stderr=args.foreground and args.stderr)


def _daemonize(pidfile: str):
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    with open(os.devnull, "rb") as dn_in, open(os.devnull, "ab") as dn_out:
        os.dup2(dn_in.fileno(), 0)
        os.dup2(dn_out.fileno(), 1)
        os.dup2(dn_out.fileno(), 2)
    with open(pidfile, "w") as fh:
        fh.write(f"{os.getpid()}\n")


def cmd_check_config(args) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    banks = ", ".join(sorted(config.banks)) or "none"
    print(f"{config.path}: OK (banks: {banks})")
    return 0


def cmd_scan(args) -> int:
    from . import scan  # the checks load libmagic and libarchive; only scan needs them here
    config = _load_or_report(args.config)
    if config is None:
        return scan.EXIT_ERROR
    return scan.run(config, args.files, sender=args.sender, rcpts=args.rcpts, banks=args.bank,
                    client_ip=args.client_ip, as_json=args.json, quiet=args.quiet)


SCAN_DESCRIPTION = """\
Run the checks offline on message files (one message per file; a leading mbox "From "
line is dropped, line ends become CRLF) and print, per file: the part tree, the decoder's
problems, the findings, and per recipient the content category, the destiny and what the
MTA would be told. FILE "-" reads standard input.

Policy: --bank NAME[,NAME...] merged over the default bank (--bank DEFAULT: the default
bank alone); without --bank, banks are selected from --client-ip and --from as the milter
would (daemon name, port and SMTP AUTH are unknown offline: name those banks with --bank).

exit codes:
  0  every file is Clean for every recipient
  1  some file has findings (a category other than Clean for some recipient)
  2  a file could not be read or scanned, a usage or configuration error, an unknown bank
"""


def _quarantine_command(func):
    def run(args) -> int:
        from . import quarcmd
        config = _load_or_report(args.config)
        if config is None:
            return 1
        if func == "cmd_release":   # the release log line goes where the milter logs (syslog: the mail log)
            from . import log
            log.setup(config.settings["log"])
        return getattr(quarcmd, func)(config, args)
    return run


def cmd_dkim_genkey(args) -> int:
    from .auth import genkey
    try:
        path, record = genkey.genkey(args.domain, args.selector, args.dir, args.type, args.force)
    except genkey.GenKeyError as exc:
        print(f"pymavis: {exc}", file=sys.stderr)
        return 1
    domain, selector = args.domain.rstrip(".").lower(), args.selector.lower()
    print(f"# wrote {path} (mode 0600)")
    print("# publish in DNS:")
    print(genkey.zone_lines(domain, selector, record))
    print("# and add to the configuration (the key signs in banks with dkim_sign: true):")
    print(genkey.config_snippet(domain, selector, path, args.type))
    return 0


def cmd_version(args) -> int:
    print(f"pymavis {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pymavis", description="Mail content filter speaking the milter protocol.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("-c", "--config", default=default_config(),
                       help="main configuration file (default: %(default)s)")
        return p

    p = with_config(sub.add_parser("milter", help="run the milter service",
                                   description="Run the milter service. SIGUSR1 reloads the configuration; "
                                               "SIGTERM stops after messages in flight are done."))
    p.add_argument("--socket", metavar="SPEC",
                   help="listen here instead of milter.socket: inet:HOST:PORT, inet:PORT@HOST, unix:/path")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground (for systemd and make run)")
    p.add_argument("--stderr", action="store_true", help="with --foreground: log to stderr whatever log.target says")
    p.set_defaults(func=cmd_milter)

    p = with_config(sub.add_parser("check-config", help="validate the configuration and print every error",
                                   description="Validate the configuration; print every error; exit 1 on any."))
    p.set_defaults(func=cmd_check_config)

    p = with_config(sub.add_parser("scan", help="run the checks offline on message files",
                                   description=SCAN_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("files", nargs="+", metavar="FILE", help="a message file (RFC 5322; mbox-style is fine)")
    p.add_argument("--from", dest="sender", default="", metavar="ADDR",
                   help="envelope sender (default: the null sender <>)")
    p.add_argument("--to", dest="rcpts", action="append", metavar="ADDR",
                   help="envelope recipient, repeatable (default: user@MYDOMAIN)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--bank", metavar="NAMES", help="policy banks to merge, comma-separated (ORIGINATING,MYNETS)")
    how.add_argument("--client-ip", metavar="IP", help="select banks as for an SMTP client at this address")
    show = p.add_mutually_exclusive_group()
    show.add_argument("--json", action="store_true", help="print one JSON object per file, one per line")
    show.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (on stderr)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("quarantine", help="list, show, delete or expire quarantined mail",
                       description="What the quarantine holds (the index the milter writes).")
    qsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = with_config(qsub.add_parser("list", help="what is held: mail_id, time, category, size, sender, "
                                                 "recipients, reason, where"))
    q.set_defaults(func=_quarantine_command("cmd_list"))
    q = with_config(qsub.add_parser("show", help="a held message's record and its bytes"))
    q.add_argument("mail_id", metavar="MAIL_ID")
    q.add_argument("--raw", action="store_true", help="only the message bytes")
    q.set_defaults(func=_quarantine_command("cmd_show"))
    q = with_config(qsub.add_parser("delete", help="delete held messages (files and index entries)"))
    q.add_argument("mail_ids", nargs="+", metavar="MAIL_ID")
    q.set_defaults(func=_quarantine_command("cmd_delete"))
    q = with_config(qsub.add_parser("expire", help="delete what was kept more than DAYS days ago"))
    q.add_argument("--days", type=float, required=True, metavar="DAYS")
    q.set_defaults(func=_quarantine_command("cmd_expire"))
    q = with_config(qsub.add_parser("orphans", help="files without an index entry (interrupted writes)"))
    q.set_defaults(func=_quarantine_command("cmd_orphans"))

    p = sub.add_parser("sql", help="the database: create the tables, expire old rows",
                       description="amavisd-new's msgs/msgrcpt/maddr/quarantine tables and pymavis_quarantine, "
                                   "in quarantine.database (and sql_log.database).")
    qsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = with_config(qsub.add_parser("init", help="create the tables that are missing"))
    q.set_defaults(func=_quarantine_command("cmd_sql_init"))
    q = with_config(qsub.add_parser("expire", help="delete messages (and kept copies) older than DAYS days"))
    q.add_argument("--days", type=float, required=True, metavar="DAYS")
    q.set_defaults(func=_quarantine_command("cmd_sql_expire"))

    p = with_config(sub.add_parser(
        "release", help="deliver quarantined mail through the MTA (resubmit.socket), once",
        description="Deliver quarantined messages to their recipients (or --to) through the MTA's "
                    "re-submission listener (resubmit.socket), with the original envelope sender. "
                    "Recorded only after the MTA's 250; a second release is refused unless --force. "
                    "Users not in quarantine.admins must give --secret. Exit 1 when refused or failed."))
    p.add_argument("mail_ids", nargs="*", metavar="MAIL_ID")
    p.add_argument("--secret", metavar="SECRET_ID", help="the message's secret_id (needed by non-admins)")
    p.add_argument("--to", action="append", metavar="ADDR", help="deliver to this address instead, repeatable")
    p.add_argument("--force", action="store_true", help="release again to recipients already released to")
    p.add_argument("--list", action="store_true", help="list what is held (as quarantine list)")
    p.add_argument("--delete", action="store_true", help="delete the given messages instead of releasing them")
    p.add_argument("--expire", type=float, metavar="DAYS", help="delete what was kept more than DAYS days ago")
    p.set_defaults(func=_quarantine_command("cmd_release"))

    def asking(p):
        with_config(p)
        p.add_argument("--socket", metavar="PATH", help="the control socket (default: control_socket of the "
                                                        "configuration, STATE_DIR/pymavis.ctl)")
        p.add_argument("--watch", type=float, nargs="?", const=statuscmd.WATCH_DEFAULT_S, metavar="SECONDS",
                       help="ask again every SECONDS (default %(const)s), redrawing in place; Ctrl-C ends")
        p.add_argument("--json", action="store_true", help="print the milter's answer as JSON")
        return p

    p = asking(sub.add_parser(
        "status", help="what each milter connection is doing now (like amavisd-nanny)",
        description="Ask the running milter (its control socket) what each connection is doing: log id, age, "
                    "busy time, time in its state, mail_id, and the trail of steps: A accepted, m MAIL FROM, "
                    "r RCPT, d DATA, = checking started, D decoding, V virus scan, S spam check, "
                    "Q quarantine and notices, . done. Exit 1 when the milter cannot be asked."))
    p.add_argument("--stuck-s", type=float, default=statuscmd.STUCK_DEFAULT_S, metavar="SECONDS",
                   help="mark connections busy with one message this long as STUCK (default: %(default)s)")
    p.set_defaults(func=statuscmd.cmd_status)

    p = asking(sub.add_parser(
        "stats", help="counters since start (like amavisd-agent)",
        description="Ask the running milter (its control socket) for its counters since start, with amavisd-"
                    "agent's names: totals, per hour, percent of InMsgs; and the virus names seen most often. "
                    "Exit 1 when the milter cannot be asked."))
    p.add_argument("--top", type=int, default=statuscmd.TOP_DEFAULT, metavar="N",
                   help="virus names to show (default: %(default)s, at most 100)")
    p.set_defaults(func=statuscmd.cmd_stats)

    p = sub.add_parser("dkim", help="DKIM keys", description="DKIM signing keys (docs/authentication.md).")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = dsub.add_parser("genkey", help="write a signing key and print its DNS TXT record",
                        description="Write DIR/DOMAIN.SELECTOR.key (mode 0600) and print the TXT record "
                                    "SELECTOR._domainkey.DOMAIN and the dkim_signing_keys entry.")
    q.add_argument("domain", metavar="DOMAIN")
    q.add_argument("selector", metavar="SELECTOR")
    q.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="rsa (2048 bits, default) or ed25519")
    q.add_argument("--dir", default="/etc/pymavis/dkim", help="where the key goes (default: %(default)s)")
    q.add_argument("--force", action="store_true", help="replace an existing key file")
    q.set_defaults(func=cmd_dkim_genkey)

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
