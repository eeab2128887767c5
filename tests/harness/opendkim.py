"""OpenDKIM's own verifier (`opendkim-testmsg`, Debian's opendkim-tools) over a message, with
the keys "published" by our fake DNS server: an independent check of the signatures pymavis
makes.

opendkim-testmsg looks keys up through libc's resolver, which reads /etc/resolv.conf and
only speaks to port 53; it has no option to read keys from elsewhere. So it runs in a
network and mount namespace of its own (`unshare --net --mount`, root: make test runs as
root): loopback brought up, a resolv.conf naming 127.0.0.1 bind-mounted over
/etc/resolv.conf, and FakeDNS on 127.0.0.1:53 inside the namespace. Nothing outside the
namespace sees any of it, and the namespace ends with the command.

    verify(message, {"sel._domainkey.example.org": "v=DKIM1; k=rsa; p=..."}) -> Verdict

opendkim-testmsg prints nothing and exits 0 when every signature verified; otherwise it
exits non-zero with libopendkim's reason on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

TESTMSG = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Verdict:
    returncode: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def verify(message: bytes, txt: dict[str, str], timeout_s: float = 60) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="opendkim-") as tmp:
        zone, msg = os.path.join(tmp, "zone.json"), os.path.join(tmp, "message.eml")
        with open(zone, "w") as f:
            json.dump(txt, f)
        with open(msg, "wb") as f:
            f.write(message)
        env = dict(os.environ, PYTHONPATH=TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(["unshare", "--net", "--mount", sys.executable, "-m", "harness.opendkim", zone, msg, tmp],
                              capture_output=True, timeout=timeout_s, env=env)
        return Verdict(proc.returncode, proc.stderr.decode("utf-8", "replace"))


def _in_namespace(zone_path: str, message_path: str, tmp: str) -> int:
    from harness.fakedns import FakeDNS

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
    with open(zone_path) as f:
        txt = json.load(f)
    with FakeDNS(txt, port=53), open(message_path, "rb") as stdin:
        proc = subprocess.run([TESTMSG, "-t", tmp], stdin=stdin, capture_output=True, timeout=30)
    sys.stderr.write(proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace"))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(_in_namespace(*sys.argv[1:4]))
