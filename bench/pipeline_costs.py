"""What an `attack` run spends outside the attack: onnxruntime validation and HDF5 writing (timers
wrapped around the library's functions from here, the library untouched), and peak memory of
the CLI against the number of inputs."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

from onnxattack import validate
from onnxattack.config import AttackConfig
from onnxattack.pipeline import run_attack
from onnxattack.results import ResultWriter


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started
    return wrapper


def _patch_everywhere(name: str, original: Callable[..., Any], replacement: Callable[..., Any]) -> list[tuple]:
    """Replace a function in every onnxattack module that imported it by name; returns what to undo."""
    undo = []
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("onnxattack") and getattr(module, name, None) is original:
            undo.append((module, name, original))
            setattr(module, name, replacement)
    return undo


def shares(method: str, count: int, device: str) -> dict:
    """Fractions of a run_attack's wall time in validation and in ResultWriter.append."""
    validating, writing = [0.0], [0.0]
    undo = []
    for name in ("ort_verdict", "torch_reached"):
        original = getattr(validate, name)
        undo += _patch_everywhere(name, original, _timed(original, validating))
    original_append = ResultWriter.append
    ResultWriter.append = _timed(original_append, writing)  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as folder:
            inputs = Path(folder) / "inputs.npy"
            np.save(inputs, test_inputs("digits-mosaic", count))
            started = time.perf_counter()
            run_attack(build("digits-mosaic").path, inputs, Path(folder) / "out.h5",
                       AttackConfig(method=method, target="hide-single", device=device))
            total = time.perf_counter() - started
    finally:
        ResultWriter.append = original_append  # type: ignore[method-assign]
        for module, name, original in undo:
            setattr(module, name, original)
    return {"method": method, "inputs": count, "seconds": round(total, 2),
            "validate_share": validating[0] / total, "write_share": writing[0] / total}


_PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib(args: list[str]) -> int:
    """Peak resident set of a command, in KiB (one watcher process per command)."""
    done = subprocess.run([sys.executable, "-c", _PEAK, *args], check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def memory_ratio(count: int, device: str, method: str = "ml-deepfool") -> dict:
    """Peak RSS of `onnxattack attack` on 8N inputs / on N inputs (fresh processes)."""
    cli = Path(sys.executable).with_name("onnxattack")
    # an uninstalled checkout (the GPU machine): alias cli/ and model_zoo/ as gpu_check does
    shim = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
            "from bench.gpu_check import ensure_layout; ensure_layout(); "
            "from onnxattack.cli.main import main; sys.argv[0] = 'onnxattack'; main()")
    command = [str(cli)] if cli.exists() else [sys.executable, "-c", shim]
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        for rows in (count, 8 * count):
            inputs = Path(folder) / f"inputs{rows}.npy"
            np.save(inputs, test_inputs("digits-mosaic", rows))
            out = Path(folder) / f"out{rows}.h5"
            peaks[rows] = peak_rss_kib([*command, "attack", str(build("digits-mosaic").path), str(inputs),
                                        "-o", str(out), "--method", method, "--target", "hide-single",
                                        "--device", device])
    return {"method": method, "inputs": [count, 8 * count],
            "peak_rss_mib": [peaks[count] / 1024, peaks[8 * count] / 1024], "ratio": peaks[8 * count] / peaks[count]}


if __name__ == "__main__":
    print(json.dumps({"shares": shares("ml-deepfool", 64, "cpu"), "memory": memory_ratio(64, "cpu")}, indent=1))
