"""Re-submission: a copy of the message, with its own header edits, for recipients that
cannot share the transaction's edits (edits.py), sent over SMTP to the MTA's loopback
listener that does not filter again (`resubmit.socket`; contrib/postfix's
127.0.0.1:10025, whose receive_override_options include no_milters).

Each group is one SMTP transaction: MAIL FROM the original envelope sender (BODY and
SMTPUTF8 carried over), RCPT TO each recipient of the group (NOTIFY and ORCPT carried
over), DATA with the original bytes plus the group's edits (rawmsg.apply_edits). A group
counts as sent only after the listener's 250 to the end of DATA; a refused recipient
aborts the group (RSET) before any data is sent, so a group is delivered whole or not at
all.

What can fail: the listener unreachable, a 4xx/5xx at any step, a timeout
(`resubmit.timeout_s` for the connect and each reply): ResubmitFailed with the listener's
words. The pipeline then answers TEMPFAIL if nothing was sent yet, or keeps the groups
not yet sent in this transaction (nothing lost, nothing sent twice).

Threads: runs in the pipeline's worker, before the milter answer is given. `submit` is the
same client for `pymavis release` and the notification outbox.
"""

from __future__ import annotations

import smtplib

from pymavis import netclient, rawmsg, sanitize

MAIL_PARAMS = ("BODY", "SMTPUTF8")
RCPT_PARAMS = ("NOTIFY", "ORCPT")


class ResubmitFailed(Exception):
    pass


def _params(params, keep) -> list[str]:
    return [str(p) for p in params if str(p).split("=", 1)[0].upper() in keep]


def message_bytes(raw: bytes, edits) -> bytes:
    """`raw` as it would leave the MTA with these edits (values sanitised as outcome.apply does)."""
    from .outcome import HeaderEdit
    clean = [HeaderEdit(e.name, sanitize.header_text(e.value, ascii_only=not e.from_message), e.op, e.index)
             for e in edits]
    return rawmsg.apply_edits(raw, clean)


def send(settings: dict, helo: str, txn, rcpts, data: bytes) -> str:
    """Submit `data` for `rcpts` (transaction.Rcpt-like: .addr, .params) with the transaction's
    envelope sender; the listener's final reply. Raises ResubmitFailed."""
    return submit(settings, helo, txn.mail_from, txn.mail_params, rcpts, data)


def submit(settings: dict, helo: str, mail_from: str, mail_params, rcpts, data: bytes) -> str:
    """One SMTP transaction to `settings["socket"]` (also used by release and notifications):
    the final reply after DATA. Raises ResubmitFailed."""
    if not settings.get("socket"):
        raise ResubmitFailed("resubmit.socket is not set: no MTA listener to submit to")
    address = netclient.parse_socket_spec(settings["socket"], "resubmit socket")
    timeout = settings["timeout_s"]
    try:
        with smtplib.SMTP(address.host, address.port, local_hostname=settings.get("helo") or helo,
                          timeout=timeout) as smtp:
            smtp.ehlo()
            code, text = smtp.mail(mail_from, _params(mail_params, MAIL_PARAMS))
            if code != 250:
                raise ResubmitFailed(f"MAIL FROM answered {code} {text.decode(errors='replace')}")
            for rcpt in rcpts:
                code, text = smtp.rcpt(rcpt.addr, _params(rcpt.params, RCPT_PARAMS))
                if code not in (250, 251):
                    smtp.rset()
                    raise ResubmitFailed(f"RCPT TO <{rcpt.addr}> answered {code} {text.decode(errors='replace')}")
            code, text = smtp.data(data)
            if code != 250:
                raise ResubmitFailed(f"DATA answered {code} {text.decode(errors='replace')}")
            return f"{code} {text.decode(errors='replace')}"
    except ResubmitFailed:
        raise
    except smtplib.SMTPResponseException as exc:
        raise ResubmitFailed(f"{settings['socket']} answered {exc.smtp_code} "
                             f"{exc.smtp_error.decode(errors='replace')}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise ResubmitFailed(f"{settings['socket']}: {type(exc).__name__}: {exc}") from exc
