"""`onnxattack serve`: a warm process that runs other `onnxattack` commands, so that they skip the imports.

A command started in a fresh process spends 1.5-2.5 s importing torch, onnxruntime, onnx2torch and h5py
before its first step (bench/startup.py). The server imports them once; for each command the console
script hands it (cli/launch.py, protocol in cli/warm.py) it forks a child, which takes the caller's
streams, working folder and environment and runs the command as the caller's own process would, then
reports the exit code. The server itself never runs a torch operation or touches CUDA: a fork is only safe
before a thread pool or a device context exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .warm import LineReader, difference, fingerprint, private_folder, private_socket, send_line

# What a command imports before its first step; symbolic_shapes (and sympy, 0.3-0.5 s) is what autograd
# imports at ML-DeepFool's first batched Jacobian.
PRELOADED = ("onnxattack.pipeline", "onnxattack.loader", "onnxattack.bridge", "onnxattack.results", "onnx",
             "onnxruntime", "onnx2torch", "h5py", "tqdm", "torch.fx.experimental.symbolic_shapes")
REPEAT_S = 1.0  # a gone caller's Ctrl-C is raised again this often until the command takes it


class ServeError(Exception):
    """The server cannot start (exit 2): the socket's path is taken or cannot be made private."""


def preload() -> None:
    """Import what a command imports on its way to the first step (imports only: no torch op runs here)."""
    import importlib

    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _listening_socket(path: Path) -> socket.socket:
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private_folder(folder):
        raise ServeError(f"{folder} is not a private folder of yours (others may write to it)")
    if path.exists() or path.is_symlink():
        if not private_socket(path):
            raise ServeError(f"{path} exists and is not a socket of yours; choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a socket left by a server that ended without removing it
        else:
            raise ServeError(f"a server already listens on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    return listener


def _peer_uid(connection: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


def serve(path: Path, idle_timeout: float, log: Callable[[str], None], run: Callable[[list[str]], int],
          taken: threading.Event | None = None) -> None:
    """Accept commands on `path` until SIGINT / SIGTERM or `idle_timeout` seconds (0: never) without one.

    taken: set in a command's process once the command has taken a Ctrl-C; until then a Ctrl-C standing for a
    caller that is gone is raised again every REPEAT_S seconds (None: once)."""
    listener = _listening_socket(path)
    server_pid = os.getpid()
    own = fingerprint()
    children: dict[int, float] = {}  # pid -> when it started
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    last_activity = time.monotonic()
    log(f"serving on {path} (pid {server_pid}); stop with Ctrl-C")
    try:
        while not stopping.is_set():
            if selector.select(timeout=0.5):
                connection, _ = listener.accept()
                with connection:
                    started = _start(connection, own, listener, run, taken)
                if started is not None:
                    children[started[0]] = time.monotonic()
                    log(f"pid {started[0]}: {started[1]}")
                last_activity = time.monotonic()
            for pid, status in _reaped():
                began = children.pop(pid, time.monotonic())
                log(f"pid {pid}: exit {os.waitstatus_to_exitcode(status)} after {time.monotonic() - began:.1f} s")
                last_activity = time.monotonic()
            if idle_timeout and not children and time.monotonic() - last_activity > idle_timeout:
                log(f"no command for {idle_timeout:g} s: stopping")
                break
    finally:
        selector.close()
        listener.close()
        if os.getpid() == server_pid:  # never a fork's doing, whatever unwinds it
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if children:
            log(f"{len(children)} command(s) still running keep running to their end")


def _reaped() -> Iterator[tuple[int, int]]:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _start(connection: socket.socket, own: dict[str, Any], listener: socket.socket,
           run: Callable[[list[str]], int], taken: threading.Event | None) -> tuple[int, str] | None:
    """Read one request; fork its child. Returns (child's pid, the command) or None when refused."""
    fds: list[int] = []
    try:
        connection.settimeout(5)
        if _peer_uid(connection) not in (None, os.getuid()):
            return None
        reader = LineReader(connection)
        request, fds = reader.first_with_fds()
        if request is None or len(fds) != 3:
            return None
        argv, cwd, environment, umask = request["argv"], request["cwd"], request["env"], int(request["umask"])
        why = difference(own, request["fingerprint"])
        if why is not None:
            send_line(connection, {"refused": why})
            return None
        pid = os.fork()
        if pid == 0:  # the child: never returns; it says "started" itself, so that line precedes its "exit"
            listener.close()
            _child(connection, reader, fds, list(map(str, argv)), str(cwd), dict(environment), umask, run, taken)
        return pid, " ".join(argv)[:200]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _child(connection: socket.socket, reader: LineReader, fds: list[int], argv: list[str], cwd: str,
           environment: dict[str, str], umask: int, run: Callable[[list[str]], int],
           taken: threading.Event | None) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # the server's Ctrl-C is not the command's: its signals come from its caller
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a process of its own
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        send_line(connection, {"started": os.getpid()})
        above = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]  # none may be overwritten by another
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for target, fd in enumerate(above):
            os.dup2(fd, target)
            os.close(fd)
        _reopen_standard_streams()
        os.chdir(cwd)
        os.umask(umask)
        os.environ.clear()
        os.environ.update(environment)
        connection.settimeout(None)
        threading.Thread(target=relay_signals, args=(reader, taken), daemon=True).start()
        code = run(argv)
    except BaseException:  # the child must never unwind into the server's loop
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        # From here no signal may interrupt: the exit line is the caller's cue to close its end, which the
        # relay thread would otherwise turn into a Ctrl-C unwinding this fork into the server's own loop.
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(BaseException):
            send_line(connection, {"exit": code})
        os._exit(code)


def _reopen_standard_streams() -> None:
    """sys.stdin/stdout/stderr over the caller's descriptors, buffered as a process started there would be."""
    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"

    def text(fd: int, mode: str, errors: str) -> io.TextIOWrapper:
        line_buffered = os.isatty(fd) or fd == 2  # stderr is line-buffered everywhere (Python >= 3.9)
        return io.TextIOWrapper(open(fd, mode + "b", closefd=False), encoding=encoding, errors=errors,  # noqa: SIM115
                                line_buffering=line_buffered, write_through=fd == 2)

    sys.stdin = sys.__stdin__ = text(0, "r", "strict")
    sys.stdout = sys.__stdout__ = text(1, "w", "strict")
    sys.stderr = sys.__stderr__ = text(2, "w", "backslashreplace")


def relay_signals(reader: LineReader, taken: threading.Event | None) -> None:
    """The caller's Ctrl-C / SIGTERM, sent as lines, raised here; the caller gone: as if it pressed Ctrl-C, again
    every REPEAT_S seconds until the command has taken it (`taken` set). A KeyboardInterrupt can be lost where
    Python cannot raise it (a finalizer) or in a library that catches everything; a person would press Ctrl-C
    again, a caller that is gone cannot."""
    while True:
        try:
            message = reader.next()
        except (OSError, ValueError):
            message = None
        if message is None:
            while True:
                os.kill(os.getpid(), signal.SIGINT)
                if taken is None or taken.wait(REPEAT_S):
                    return
        number = message.get("signal")
        if number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(os.getpid(), signal.SIGINT if number == signal.SIGHUP else number)
