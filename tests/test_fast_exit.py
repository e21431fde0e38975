"""The `onnxattack` process ends with os._exit once its work is flushed (cli/fast_exit.py): atexit handlers
still run, the exit code and every printed line are kept, and the usual teardown comes back whenever
something could still need it (another thread running, an HDF5 file open for writing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROCESS = """
import atexit, sys, threading
class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)
kept = Teardown()
atexit.register(lambda: print("atexit ran", flush=True))
from onnxattack.cli.main import entry
{before}
sys.argv = ["onnxattack", *sys.argv[1:]]
entry()
"""


def _entry(*args: object, before: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROCESS.format(before=before), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_an_attack_ends_without_the_teardown_and_keeps_its_file_and_output(tmp_path, zoo_model, zoo_inputs):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 4))
    out = tmp_path / "r.h5"
    done = _entry("attack", zoo_model("digits-mosaic"), tmp_path / "x.npy", "-o", out, "--max-iter", "2", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "atexit ran" in lines and "teardown ran" not in lines  # the fast exit was taken, after the handlers
    summary = json.loads(next(line for line in lines if line.startswith("{")))
    assert summary["method"] == "ml-cw"
    with h5py.File(out, "r") as handle:
        assert bool(handle.attrs["complete"]) and int(handle.attrs["rows_written"]) == 4
        assert handle["x_adv"].shape == (4, *zoo_inputs("digits-mosaic", 1).shape[1:])


def test_a_refused_command_keeps_its_exit_code_and_message(tmp_path):
    done = _entry("attack", tmp_path / "missing.onnx", tmp_path / "x.npy", "-o", tmp_path / "r.h5")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("onnxattack: error:") and "missing.onnx" in done.stderr
    assert "atexit ran" in done.stdout.splitlines()


def test_the_usual_exit_comes_back_while_a_thread_runs_or_a_file_is_open_for_writing(tmp_path):
    worker = "threading.Thread(target=__import__('time').sleep, args=(2,)).start()"
    done = _entry("--version", before=worker)
    assert done.returncode == 0 and "teardown ran" in done.stdout.splitlines()

    path = tmp_path / "open.h5"
    left_open = f"import h5py; left = h5py.File({str(path)!r}, 'w'); left['a'] = [1.0, 2.0, 3.0]"
    done = _entry("--version", before=left_open)
    assert done.returncode == 0 and "teardown ran" in done.stdout.splitlines()
    with h5py.File(path, "r") as handle:  # the library's own end flushed it
        assert handle["a"][:].tolist() == [1.0, 2.0, 3.0]
