"""The quarantine commands: `pymavis quarantine list|show|delete|expire|orphans` and
`pymavis release` (release.py does the work). They read the index the milter writes
(keep.py, sqlstore.py) through the same configuration file.

Exit codes: 0 done; 1 refused or failed (no such mail_id, wrong secret, already
released, the MTA refused, the store unreadable), with one line on stderr saying why.
"""

from __future__ import annotations

import sys
import time

from . import keep, quarantine, release, sqlstore


def _fail(message: str) -> int:
    print(f"pymavis: {message}", file=sys.stderr)
    return 1


def _time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _kept(entry: sqlstore.QEntry):
    return [r for r in entry.rcpts if r.quar_type]


def list_lines(entries) -> list[str]:
    lines = [f"{'MAIL_ID':<12}  {'TIME':<19}  {'CATEGORY':<9}  {'SIZE':>8}  {'SENDER -> RECIPIENTS'}  REASON  [WHERE]"]
    for e in entries:
        kept = _kept(e)
        rcpts = ",".join(f"<{r.addr}>" + ("(released)" if r.rs == "R" else "") for r in kept)
        where = ",".join(sorted({_where(r) for r in kept}))
        category = kept[0].category if kept else "-"
        lines.append(f"{e.mail_id:<12}  {_time(e.time)}  {category:<9}  {e.size:>8}  <{e.sender}> -> {rcpts}  "
                     f"{kept[0].reason if kept else ''}  [{where}]")
    return lines


def _where(r: sqlstore.QRcpt) -> str:
    return {"F": f"file:{r.quar_loc}", "Q": "sql", "H": f"hold:{r.quar_loc}"}.get(r.quar_type, r.quar_type)


def cmd_list(config, args) -> int:
    try:
        entries = keep.keeper(config).db.entries()
    except sqlstore.StoreError as exc:
        return _fail(str(exc))
    for line in list_lines(entries):
        print(line)
    return 0


def cmd_show(config, args) -> int:
    keeper = keep.keeper(config)
    try:
        entry = keeper.db.entry(args.mail_id)
        kept = _kept(entry)
        if not args.raw:
            for name, value in (("mail_id", entry.mail_id), ("time", _time(entry.time)),
                                ("sender", f"<{entry.sender}>"), ("size", entry.size), ("queue_id", entry.queue_id),
                                ("bank", entry.policy), ("client", entry.client_addr), ("subject", entry.subject)):
                print(f"{name + ':':<10} {value}")
            for r in entry.rcpts:
                state = f"kept ({_where(r)}), {r.category}: {r.reason}" if r.quar_type else "not kept"
                if r.rs == "R":
                    state += f", released by {r.released_by} at {_time(r.released_time or 0)}: {r.release_resp}"
                print(f"{'rcpt:':<10} <{r.addr}> ds={r.ds} {state}")
            print()
        if not kept:
            return _fail(f"mail_id {args.mail_id} has no stored copy")
        if kept[0].quar_type == "H":
            print(f"(in the MTA's hold queue as {kept[0].quar_loc}: postcat -q {kept[0].quar_loc})")
            return 0
        sys.stdout.flush()
        sys.stdout.buffer.write(release.message_bytes(keeper, entry, kept[0]))
    except (sqlstore.StoreError, quarantine.QuarantineError, release.ReleaseError) as exc:
        return _fail(str(exc))
    return 0


def cmd_delete(config, args) -> int:
    keeper = keep.keeper(config)
    for mail_id in args.mail_ids:
        try:
            keeper.discard(keeper.db.entry(mail_id))
        except (sqlstore.StoreError, OSError) as exc:
            return _fail(str(exc))
        print(f"deleted {mail_id}")
    return 0


def cmd_expire(config, args) -> int:
    keeper = keep.keeper(config)
    cutoff = time.time() - args.days * 86400
    try:
        old = keeper.db.entries(older_than=cutoff)
        progress = _Progress(len(old), "expiring")
        for entry in old:
            keeper.discard(entry)
            progress.step()
        progress.done()
    except (sqlstore.StoreError, OSError) as exc:
        return _fail(str(exc))
    print(f"expired {len(old)} message(s) older than {args.days:g} day(s)")
    return 0


def _databases(config) -> list[sqlstore.Database]:
    """The quarantine index, and the SQL log's database when that is another one."""
    from . import sqllog
    dbs = [keep.keeper(config).db]
    sql = sqllog.sql_log(config)
    if sql is not None and sql.url != keep.keeper(config).url:
        dbs.append(sql.db)
    return dbs


def cmd_sql_init(config, args) -> int:
    """Create the tables that are missing (amavis's msgs, msgrcpt, maddr, quarantine and ours)."""
    try:
        for db in _databases(config):
            print(f"{db.where}: tables ready")
    except sqlstore.StoreError as exc:
        return _fail(str(exc))
    return 0


def cmd_sql_expire(config, args) -> int:
    """Kept messages (files too) and logged ones older than --days."""
    status = cmd_expire(config, args)
    if status:
        return status
    cutoff = time.time() - args.days * 86400
    try:
        gone = sum(len(db.expire(cutoff)) for db in _databases(config))
    except sqlstore.StoreError as exc:
        return _fail(str(exc))
    print(f"expired {gone} logged message(s) older than {args.days:g} day(s)")
    return 0


def cmd_orphans(config, args) -> int:
    """Files without an index entry: writes interrupted before the milter answered."""
    keeper = keep.keeper(config)
    try:
        known = {r.quar_loc for e in keeper.db.entries() for r in _kept(e) if r.quar_type == "F"}
    except sqlstore.StoreError as exc:
        return _fail(str(exc))
    root = keeper.dir
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".json"
             and str(p.relative_to(root)) not in known and "tmp" not in p.relative_to(root).parts] \
        if root.is_dir() else []
    for p in sorted(found):
        print(p)
    return 0


def cmd_release(config, args) -> int:
    if args.list:
        return cmd_list(config, args)
    if args.expire is not None:
        args.days = args.expire
        return cmd_expire(config, args)
    if not args.mail_ids:
        return _fail("release: give MAIL_ID (or --list, --expire DAYS)")
    if args.delete:
        return cmd_delete(config, args)
    status = 0
    for mail_id in args.mail_ids:
        try:
            done = release.release(config, mail_id, secret=args.secret, to=args.to, force=args.force)
        except release.ReleaseError as exc:
            status = _fail(str(exc))
            continue
        print(f"released {done.mail_id} to {', '.join(f'<{a}>' for a in done.rcpts)}: {done.reply}")
    return status


class _Progress:
    """A one-line progress bar on stderr when it is a terminal and the run is long."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.n = total, what, 0
        self.show = sys.stderr.isatty() and total >= 100

    def step(self):
        self.n += 1
        if self.show and (self.n % 50 == 0 or self.n == self.total):
            width = 30
            filled = width * self.n // self.total
            print(f"\r{self.what} [{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total}",
                  end="", file=sys.stderr, flush=True)

    def done(self):
        if self.show:
            print(file=sys.stderr)
