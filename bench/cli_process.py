"""`python -m bench.cli_process ARGS...`: the `onnxattack` command in a process of its own, from an installed
package or from a checkout that is not installed (a lent GPU machine: bench/gpu_check.py's aliases)."""

from __future__ import annotations

import sys


def main() -> None:
    from .gpu_check import ensure_layout

    ensure_layout()
    from onnxattack.cli.main import entry

    sys.argv = ["onnxattack", *sys.argv[1:]]
    entry()


if __name__ == "__main__":
    main()
