"""What `onnxattack serve` and the console script agree on: where the server listens, which code and
import-time settings it runs, and how a command and its result travel. Standard library only: the console
script imports this before deciding whether to import torch at all.

A command travels as one JSON line, with the caller's stdin, stdout and stderr passed along as file
descriptors (SCM_RIGHTS), so the command reads and writes the caller's own streams. The server answers with
JSON lines: {"refused": why} (the caller runs the command itself), or {"started": pid} and, when the
command is done, {"exit": code}. The caller may send {"signal": number} lines while it waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from . import STARTING_ENVIRONMENT

SERVER_VARIABLE = "ONNXATTACK_SERVER"  # a socket path, or "off": never hand commands to a server
OFF = "off"
# Settings read once, when torch, onnxruntime, OpenMP or Python start: a server started under other values
# would run the command differently, so such a command runs in its own process instead.
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "PYTORCH_", "TORCH", "ORT_",
                        "PYTHON", "LD_", "HDF5_")
NOT_FORWARDED = ("serve",)  # commands that always run in the caller's process
MAX_LINE = 1 << 20


def default_socket() -> Path:
    """$XDG_RUNTIME_DIR/onnxattack/server.sock, else /tmp/onnxattack-UID/server.sock (a folder only the user can
    enter)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "onnxattack" if runtime else Path("/tmp") / f"onnxattack-{os.getuid()}"
    return folder / "server.sock"


def chosen_socket() -> Path | None:
    """The socket the console script should try: $ONNXATTACK_SERVER, or the default; None when switched off."""
    value = os.environ.get(SERVER_VARIABLE)
    if value is not None and value.strip().lower() in (OFF, "0", "no", "false", ""):
        return None
    return Path(value) if value else default_socket()


def private_folder(folder: Path) -> bool:
    """True when `folder` is this user's and no one else can write to it."""
    try:
        status = os.stat(folder)
    except OSError:
        return False
    return status.st_uid == os.getuid() and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def private_socket(path: Path) -> bool:
    """True when `path` is a socket of this user's in a private folder: the only kind a command (and its
    streams) is handed to."""
    try:
        own = os.stat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(own.st_mode) and own.st_uid == os.getuid() and private_folder(path.parent)


def _source_stamp() -> str:
    """The installed code, as the modification times of its Python files (a reinstall or an edit changes it):
    the package, this folder (onnxattack.cli) and, in a source checkout, model_zoo/ beside it."""
    here = Path(__file__).resolve().parent
    roots = {sys.modules["onnxattack"].__path__[0], str(here)}
    if (here.parent / "model_zoo").is_dir():
        roots.add(str(here.parent / "model_zoo"))
    times: list[str] = []
    for root in sorted(roots):
        for folder, _, files in sorted(os.walk(root)):
            times.extend(f"{folder}/{name}:{os.stat(os.path.join(folder, name)).st_mtime_ns}"
                         for name in sorted(files) if name.endswith(".py"))
    return hashlib.sha256("\n".join(times).encode()).hexdigest()


def import_time_settings(environment: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in sorted(environment.items()) if name.startswith(IMPORT_TIME_PREFIXES)}


def fingerprint() -> dict[str, Any]:
    """What must be equal between the server and a caller for the server to run the caller's command."""
    return {"python": sys.executable, "version": sys.version, "code": _source_stamp(),
            "settings": import_time_settings(STARTING_ENVIRONMENT)}


def difference(server: dict[str, Any], caller: dict[str, Any]) -> str | None:
    """Why a server with fingerprint `server` should not run a command from `caller` (None: it may)."""
    if server["python"] != caller["python"] or server["version"] != caller["version"]:
        return f"it runs another Python ({server['python']})"
    if server["code"] != caller["code"]:
        return "its onnxattack code is older or newer than this one (restart `onnxattack serve`)"
    if server["settings"] != caller["settings"]:
        names = sorted(set(server["settings"].items()) ^ set(caller["settings"].items()))
        return f"it was started with other {', '.join(sorted({name for name, _ in names}))}"
    return None


def send_line(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


class LineReader:
    """JSON lines from a socket, the first one possibly arriving with file descriptors."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def first_with_fds(self, most: int = 3) -> tuple[dict[str, Any] | None, list[int]]:
        data, fds, _, _ = socket.recv_fds(self.connection, MAX_LINE, most)
        self.buffer += data
        return self.next(), fds

    def next(self) -> dict[str, Any] | None:
        """The next message; None when the other side closed the connection."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ValueError("message too long")
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("a message must be a JSON object")
        return message
