"""`python -m bench.warm_client ARGS...`: the `onnxattack` console script (cli/launch.py), from an installed package
or from a checkout that is not installed, importing only what the console script imports before it hands
the command to a running `onnxattack serve`."""

from __future__ import annotations

import sys


def main() -> None:
    from .gpu_check import ensure_layout

    ensure_layout(cli_modules=("warm", "launch"), zoo_modules=())
    from onnxattack.cli.launch import entry

    sys.argv = ["onnxattack", *sys.argv[1:]]
    entry()


if __name__ == "__main__":
    main()
