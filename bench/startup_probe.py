"""`python -m bench.startup_probe STAMPS -- onnxattack ARGS...`: the CLI as its console script runs it, writing to
STAMPS (JSON) the wall-clock time once the CLI's imports are done, at the attack's first model call (the first
step), and once the command and its atexit handlers are done (what follows is the process's exit).

`python -m bench.startup_probe --serve SOCKET`: `onnxattack serve` on SOCKET, each command it runs writing the
time of its first step to the file its caller names in $ONNXATTACK_BENCH_STAMPS."""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

STAMPS_VARIABLE = "ONNXATTACK_BENCH_STAMPS"


def serve(socket_path: str) -> None:
    import os

    from .gpu_check import ensure_layout

    ensure_layout()
    from onnxattack.cli.main import entry

    from onnxattack.victim import Victim

    original = Victim.attack_space
    stamped: list[bool] = []

    def first_step(self: Victim, x):  # type: ignore[no-untyped-def]  # runs in the server's forks
        if not stamped and os.environ.get(STAMPS_VARIABLE):
            stamped.append(True)
            Path(os.environ[STAMPS_VARIABLE]).write_text(json.dumps({"first_step": time.time()}))
        return original(self, x)

    Victim.attack_space = first_step  # type: ignore[method-assign]
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

    atexit.register(exiting)
    from .gpu_check import ensure_layout

    ensure_layout()  # a checkout that is not installed (a lent GPU machine): cli/ as onnxattack.cli
    from onnxattack.cli.main import entry

    from onnxattack.victim import Victim

    stamps["imported"] = time.time()
    original = Victim.attack_space

    def first_step(self: Victim, x):  # type: ignore[no-untyped-def]
        if "first_step" not in stamps:
            stamps["first_step"] = time.time()
            stamps_path.write_text(json.dumps(stamps))
        return original(self, x)

    Victim.attack_space = first_step  # type: ignore[method-assign]
    stamps_path.write_text(json.dumps(stamps))
    sys.argv = ["onnxattack", *args]
    entry()


if __name__ == "__main__":
    main()
