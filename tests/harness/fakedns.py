"""A DNS server for end-to-end tests: answers TXT queries from a table on a loopback UDP
port, NXDOMAIN for every other name and type. pymavis's resolver is pointed at it
(`dns: {resolver: "127.0.0.1:PORT"}`), so DKIM keys are "published" without the network.
Built on dnspython's message classes (the library pymavis's resolver uses)."""

from __future__ import annotations

import socketserver
import threading

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .net import LOOPBACK


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.message.from_wire(data)
        except Exception:   # not DNS: no answer, as a server would do
            return
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        records = self.server.txt.get(name) if question.rdtype == dns.rdatatype.TXT else None
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            strings = " ".join('"' + records[i:i + 255] + '"' for i in range(0, len(records), 255))
            response.answer.append(dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, dns.rdatatype.TXT,
                                                       strings))
        self.server.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        sock.sendto(response.to_wire(), self.client_address)


class FakeDNS(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, txt: dict[str, str], port: int = 0):
        super().__init__((LOOPBACK, port), _Handler)
        self.txt = {k.lower().rstrip(".") + ".": v for k, v in txt.items()}
        self.queries: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self.serve_forever, name="fakedns", daemon=True)

    @property
    def spec(self) -> str:
        return f"{LOOPBACK}:{self.server_address[1]}"

    def __enter__(self) -> "FakeDNS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
