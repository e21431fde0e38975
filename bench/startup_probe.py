"""`python -m bench.startup_probe STAMPS -- onnxattack ARGS...`: the CLI as its console script runs it, writing to
STAMPS (JSON) the wall-clock time once the CLI's imports are done, at the attack's first model call (the first
step), and once the command and its atexit handlers are done (what follows is the process's exit).

`python -m bench.startup_probe --serve SOCKET`: `onnxattack serve` on SOCKET, each command it runs writing the
time of its first step to the file its caller names in $ONNXATTACK_BENCH_STAMPS."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

STAMPS_VARIABLE = "ONNXATTACK_BENCH_STAMPS"


def _cli_entry(on_first_step: Callable[[], None]) -> Callable[[], None]:
    """The CLI's entry (from an installed package or a checkout that is not: a lent GPU machine), with
    `on_first_step` called at the first model call of the attack (once per process: per fork in a server)."""
    from .gpu_check import ensure_layout

    ensure_layout()
    from onnxattack.cli.main import entry

    from onnxattack.victim import Victim

    original = Victim.attack_space
    called: list[bool] = []

    def first_step(self: Victim, x):  # type: ignore[no-untyped-def]
        if not called:
            called.append(True)
            on_first_step()
        return original(self, x)

    Victim.attack_space = first_step  # type: ignore[method-assign]
    return entry


def serve(socket_path: str) -> None:
    def stamp() -> None:  # runs in the server's forks, with their caller's environment
        if os.environ.get(STAMPS_VARIABLE):
            Path(os.environ[STAMPS_VARIABLE]).write_text(json.dumps({"first_step": time.time()}))

    entry = _cli_entry(stamp)
    sys.argv = ["onnxattack", "serve", "--socket", socket_path, "--idle-timeout", "900"]
    entry()


def main() -> None:
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    stamps_path, args = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    stamps: dict[str, float] = {}

    def exiting() -> None:  # registered first, so run last of the atexit handlers
        stamps["exiting"] = time.time()
        stamps_path.write_text(json.dumps(stamps))

    def stamp() -> None:
        stamps["first_step"] = time.time()
        stamps_path.write_text(json.dumps(stamps))

    atexit.register(exiting)
    entry = _cli_entry(stamp)
    stamps["imported"] = time.time()
    stamps_path.write_text(json.dumps(stamps))
    sys.argv = ["onnxattack", *args]
    entry()


if __name__ == "__main__":
    main()
