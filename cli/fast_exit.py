"""Leaving the `onnxattack` process without the interpreter's teardown.

Once a command is done, CPython's finalisation frees every module and runs its last garbage collections;
with torch loaded that takes 1-1.5 s on the development machine (bench/startup.py `exit_s`), more than
the attack of a small input set. The process instead ends with os._exit once nothing is left that the
teardown would do for it: the atexit handlers are run here first (h5py's, tqdm's, Ray's, logging's),
and the usual exit is kept whenever another thread is still running, an HDF5 file is still open for
writing (the library's own end would flush it) or stdout / stderr cannot be flushed.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def _other_threads_running() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate()
            if thread.is_alive() and not thread.daemon and thread is not threading.main_thread()]


def _hdf5_files_open_for_writing() -> list:
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return []
    files = h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    return [file for file in files if file.get_intent() & h5py.h5f.ACC_RDWR]


def exit_now(code: object) -> NoReturn:
    """Exit with `code` (a SystemExit code) as quickly as is safe."""
    if code is None:
        code = 0
    if not isinstance(code, int) or isinstance(code, bool) or _other_threads_running():
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the usual exit reports it
        raise SystemExit(code) from None
    if _hdf5_files_open_for_writing():
        raise SystemExit(code)
    os._exit(code)


def settle() -> None:
    """What the interpreter's end would do that matters, for a process that ends with os._exit whatever
    happens (a command run by `onnxattack serve`): its threads finished, atexit handlers run, HDF5 files
    open for writing closed, streams flushed."""
    for thread in _other_threads_running():
        thread.join()
    atexit._run_exitfuncs()
    for file in _hdf5_files_open_for_writing():
        sys.modules["h5py"].h5f.flush(file)
        file.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
