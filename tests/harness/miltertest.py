"""Drive a running milter with Debian's `miltertest` (Lua scripts) and read what it saw.

`run_script(spec, lua)` runs a script and returns its stdout; the scripts print
`RESULT key value` lines that `results()` turns into a dict. miltertest swallows the text
of a Lua error(), so scripts print before they fail. miltertest cannot send end-of-message
macros (only CONNECT, HELO, MAIL, RCPT), and MT_SMTPREPLY compares the reply text whole.
"""

from __future__ import annotations

import subprocess


def lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def transaction(spec: str, *, connect_macros: dict, mail_from: str, rcpts: list[str],
                headers: list[tuple[str, str]], body: str, mail_macros: dict | None = None,
                mail_args: list[str] | None = None, client=("client.example", "192.0.2.10"),
                checks: str = "") -> str:
    """A Lua script for one transaction; prints RESULT lines for each stage's reply."""
    out = [f'conn = mt.connect({lua_str(spec)}, 40, 0.25)',
           'if conn == nil then print("RESULT connect failed"); error("connect") end']

    def macro(stage, macros):
        if macros:
            args = ", ".join(f"{lua_str(k)}, {lua_str(v)}" for k, v in macros.items())
            out.append(f"mt.macro(conn, {stage}, {args})")

    def step(name, call):
        out.append(f'if {call} ~= nil then print("RESULT {name} error"); error("{name}") end')
        out.append(f'print("RESULT {name} " .. string.char(mt.getreply(conn)))')

    macro("SMFIC_CONNECT", connect_macros)
    step("connect", f"mt.conninfo(conn, {lua_str(client[0])}, {lua_str(client[1])})")
    step("helo", 'mt.helo(conn, "client.example")')
    macro("SMFIC_MAIL", mail_macros or {"i": "QID1"})
    args = "".join(", " + lua_str(a) for a in (mail_args or []))
    step("mail", f"mt.mailfrom(conn, {lua_str(mail_from)}{args})")
    for i, rcpt in enumerate(rcpts):
        step(f"rcpt{i}", f"mt.rcptto(conn, {lua_str(rcpt)})")
    out.append('if mt.getreply(conn) == SMFIR_CONTINUE or true then')
    for name, value in headers:
        out.append(f'  if mt.header(conn, {lua_str(name)}, {lua_str(value)}) ~= nil then print("RESULT header error"); error("header") end')
    out.append('  if mt.eoh(conn) ~= nil then print("RESULT eoh error"); error("eoh") end')
    out.append(f'  if mt.bodystring(conn, {lua_str(body)}) ~= nil then print("RESULT body error"); error("body") end')
    out.append('  if mt.eom(conn) ~= nil then print("RESULT eom error"); error("eom") end')
    out.append('  print("RESULT eom " .. string.char(mt.getreply(conn)))')
    out.append(checks)
    out.append('end')
    out.append('mt.disconnect(conn)')
    return "\n".join(out) + "\n"


def run_script(lua: str, tmp_path, timeout: float = 60) -> str:
    path = tmp_path / "t.lua"
    path.write_text(lua)
    proc = subprocess.run(["miltertest", "-s", str(path)], capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


def results(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            _, key, *value = line.split(" ", 2)
            out[key] = value[0] if value else ""
    return out
