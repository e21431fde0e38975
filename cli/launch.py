"""The `onnxattack` console script: hands the command to a warm `onnxattack serve` when one runs for this
user and this install (cli/serve.py), else runs it in this process (cli/main.py).

This module imports the standard library only, so that a command the server runs costs this process
milliseconds, not torch's import. $ONNXATTACK_SERVER names the server's socket, or switches it off ("off").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from . import warm


def _hand_over(path: Path, argv: list[str]) -> int | None:
    """The command's exit code as run by the server at `path`; None when it is not run there."""
    if not warm.private_socket(path):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(5)
        connection.connect(str(path))
        umask = os.umask(0)
        os.umask(umask)
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                   "fingerprint": warm.fingerprint()}
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        reader = warm.LineReader(connection)
        answer = reader.next()
    except (OSError, ValueError):
        connection.close()
        return None
    if answer is None or "started" not in answer:
        if answer is not None and "refused" in answer:
            print(f"onnxattack: not using the server at {path}: {answer['refused']}", file=sys.stderr)
        connection.close()
        return None
    return _wait(connection, reader)


def _wait(connection: socket.socket, reader: warm.LineReader) -> int:
    """Relay this process's Ctrl-C / SIGTERM / SIGHUP to the command until it reports its exit code."""

    relayed: list[int] = []

    def relay(signum: int, frame: FrameType | None) -> None:
        relayed.append(signum)
        if len(relayed) >= 3:  # a command that does not end: leave it; it sees this end close (Ctrl-C)
            print("onnxattack: error: interrupted (the command did not end; it is interrupted in the "
                  "background)", file=sys.stderr)
            os._exit(130)
        try:
            warm.send_line(connection, {"signal": signum})
        except OSError:
            pass

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, relay)
    connection.settimeout(None)
    try:
        while True:
            message = reader.next()
            if message is None:
                print("onnxattack: error: the server ended the command without an exit code", file=sys.stderr)
                return 1
            if "exit" in message:
                code = message["exit"]
                return code if isinstance(code, int) else 1
    except (OSError, ValueError) as error:
        print(f"onnxattack: error: lost the server ({error})", file=sys.stderr)
        return 1
    finally:
        connection.close()


def entry() -> None:
    argv = sys.argv[1:]
    path = warm.chosen_socket() if os.name == "posix" and hasattr(socket, "send_fds") else None
    if path is not None and (not argv or argv[0] not in warm.NOT_FORWARDED):
        try:
            code = _hand_over(path, argv)
        except KeyboardInterrupt:  # before the command started: it ends as its caller's connection closes
            print("onnxattack: error: interrupted", file=sys.stderr)
            os._exit(130)
        if code is not None:
            sys.stdout.flush()
            os._exit(code)
    from .main import entry as run_here

    run_here()


if __name__ == "__main__":
    entry()
