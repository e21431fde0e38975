"""`python -m bench.startup_probe STAMPS -- onnxattack ARGS...`: the CLI as usual, writing to STAMPS (JSON) the
wall-clock time once the CLI's imports are done and at the attack's first model call (the first step)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    stamps_path, args = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    stamps: dict[str, float] = {}
    from onnxattack.cli.main import main as cli_main

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
    cli_main()


if __name__ == "__main__":
    main()
