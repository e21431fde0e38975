"""Run the onnxattack command line in this process and SIGKILL it at a chosen moment.

The crash tests inject their faults from here, never from the library:

    python -m tests.crash_wrapper write:K -- attack MODEL X -o OUT ...   kill right after the K-th HDF5
                                                                        dataset write (mid-batch; h5py
                                                                        slicing or the result writer's
                                                                        write_rows)
    python -m tests.crash_wrapper flush:K -- ...                         kill as the K-th flush starts
    python -m tests.crash_wrapper after:S -- ...                         kill S seconds after the first
                                                                        HDF5 write, wherever it is then
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import h5py

from onnxattack.results import writer

# Every way a dataset write reaches HDF5: h5py's slicing, and the result writer's row appends.
_WRITES: list[tuple[object, str]] = [(h5py.Dataset, "__setitem__"), (writer, "write_rows")]


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _count_calls(places: list[tuple[object, str]], limit: int, after: bool) -> None:
    """Kill at the `limit`-th call of any of `places` (owner, attribute name), counted together."""
    calls = {"n": 0}

    def counted(original):
        def patched(*args, **kwargs):
            calls["n"] += 1
            if not after and calls["n"] == limit:
                _kill()
            result = original(*args, **kwargs)
            if after and calls["n"] == limit:
                _kill()
            return result
        return patched

    for owner, name in places:
        setattr(owner, name, counted(getattr(owner, name)))


def _timer_from_first_write(seconds: float) -> None:
    started = threading.Event()

    def timed(original):
        def patched(*args, **kwargs):
            if not started.is_set():
                started.set()
                threading.Timer(seconds, _kill).start()
            return original(*args, **kwargs)
        return patched

    for owner, name in _WRITES:
        setattr(owner, name, timed(getattr(owner, name)))


def main(argv: list[str]) -> None:
    fault, separator, *command = argv
    assert separator == "--", "usage: crash_wrapper FAULT -- onnxattack arguments"
    kind, value = fault.split(":")
    if kind == "write":
        _count_calls(_WRITES, int(value), after=True)
    elif kind == "flush":
        _count_calls([(h5py.File, "flush")], int(value), after=False)
    elif kind == "after":
        _timer_from_first_write(float(value))
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from onnxattack.cli.main import main as cli

    sys.argv = ["onnxattack", *command]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
