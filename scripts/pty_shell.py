#!/usr/bin/env python3
"""Drive `flowaudit sql` through a pseudo-terminal, as a person at a keyboard would: type a
statement, recall it with the up arrow, press Ctrl-C during a query and at the prompt, quit with
\\q. Prints JSON with what the terminal showed after each step and the history file; the Rust
test decides what is right.

    pty_shell.py HOME_DIR FLOWAUDIT_BIN ARG...

HOME_DIR becomes $HOME of the shell, so its history is HOME_DIR/.flowaudit_sql_history.
"""
import json
import os
import pty
import select
import sys
import time


def main(home, argv):
    history = os.path.join(home, ".flowaudit_sql_history")
    env = dict(os.environ, FLOWAUDIT_LOG="warn", TERM="xterm", HOME=home)
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    buf = bytearray()
    pos = [0]  # how far the screen has been matched

    def until(needle, timeout=30.0):
        """Read until `needle` appears after what was matched before; return the screen from
        there to the end of the needle."""
        start = pos[0]
        end = time.monotonic() + timeout
        while (i := buf.find(needle.encode(), start)) < 0:
            left = end - time.monotonic()
            if left <= 0:
                raise SystemExit(f"no {needle!r} within {timeout}s; screen:\n{buf.decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf.extend(chunk)
        pos[0] = i + len(needle)
        return buf[start:pos[0]].decode(errors="replace")

    def send(s):
        os.write(fd, s.encode())

    def prompt(needle="flowaudit> "):
        """Wait for the prompt, and for the editor to switch the terminal to raw mode: keys
        typed before that are cooked by the terminal (and Ctrl-C would flush them)."""
        seen = until(needle)
        time.sleep(0.3)
        return seen

    out = {}
    prompt()
    send("SELECT 40 + 2 AS answer;\r")
    out["first"] = until("1 row in")
    prompt()
    send("\x1b[A")  # up arrow: the last statement, edited in place (left arrow, typing)
    time.sleep(0.3)
    send("\x1b[D_again\r")
    out["recalled"] = until("1 row in")
    prompt()
    send("SELECT 6 * 7\r")  # no ';' yet: a continuation line
    out["continuation"] = prompt("-> ")
    send("  AS multi_line;\r")
    out["multi_line"] = until("1 row in")
    prompt()
    send("SELECT count(*) FROM flows a, flows b, flows c WHERE a.bytes + b.bytes + c.bytes < 0;\r")
    time.sleep(1.5)
    send("\x03")  # Ctrl-C during the query
    out["cancelled"] = until("error: cancelled")
    prompt()
    send("SELECT 'typed but not run'\x03")  # Ctrl-C at the prompt clears the line
    prompt()
    send("SELECT 'still here' AS status;\r")
    out["after"] = until("1 row in")
    prompt()
    send("\\q\r")
    _, status = os.waitpid(pid, 0)
    out["exit"] = os.waitstatus_to_exitcode(status)
    with open(history) as f:
        out["history"] = f.read()
    out["screen"] = buf.decode(errors="replace")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
