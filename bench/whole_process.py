"""Whole processes side by side: `onnxattack attack` with its defaults on the zoo CNN's ONNX file against the
published ML-CW procedure run bare (bench/bare_reference.py: torch alone, on the same network rebuilt as a native
torch module), on the same rows and targets, both judged by onnxruntime.

Each process is timed from its start to its end, imports included, as a user feels it. The reference runs twice:
at its published sizes (10 constant steps x 1000 iterations, batch-level abort) and with the model calls per row
that the engine's run used (10 steps x ceil(calls / 20) iterations, no abort), so the second ratio is the engine's
overhead (imports, conversion, checks, validation, writing, per-step bookkeeping) at equal work.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

from onnxattack.loader import load
from onnxattack.scores import ThresholdCriterion

from .overhead import native_mosaic

_TIMEOUT_S = 3600


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def _engine_command() -> list[str]:
    script = Path(sys.executable).with_name("onnxattack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bench.cli_process"]


def whole_process(rows: int = 32, rounds: int = 3, device: str = "cpu") -> dict:
    """Wall seconds of whole processes (median of `rounds`, the engine and the equal-calls reference alternating;
    the published-size reference once), success and mean L2 by onnxruntime, model calls per attacked row."""
    model_path = build("digits-mosaic").path
    model = load(model_path, device="cpu")  # for onnxruntime's verdicts and the box; the runs are processes
    criterion = ThresholdCriterion(threshold=model.reader.threshold)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        np.save(work / "x.npy", test_inputs("digits-mosaic", rows))
        torch.save(native_mosaic(model_path), work / "native.pt")

        def engine() -> float:
            return _timed([*_engine_command(), "attack", str(model_path), str(work / "x.npy"),
                           "-o", str(work / "ours.h5"), "--device", device, "--overwrite", "--quiet"])

        ours_s = [engine()]
        with h5py.File(work / "ours.h5", "r") as result:
            attacked = result["attacked"][()]
            x = result["x"][()][attacked]
            target = result["y_target"][()][attacked].astype(bool)
            won = result["success"][()][attacked]
            ours = {"success": float(won.mean()), "mean_l2": float(result["l2"][()][attacked][won].mean()),
                    "mean_calls": float(result["model_calls"][()][attacked].mean())}
        np.save(work / "xa.npy", x)
        np.save(work / "target.npy", target)

        def reference(name: str, max_iter: int, abort_early: bool) -> tuple[float, dict]:
            spec = {"module": str(work / "native.pt"), "x": str(work / "xa.npy"), "target": str(work / "target.npy"),
                    "box": list(model.box), "theta": model.reader.attack_threshold, "max_iter": max_iter,
                    "binary_steps": 10, "abort_early": abort_early, "out": str(work / f"{name}.npz"),
                    "threads": torch.get_num_threads(), "device": device}
            (work / f"{name}.json").write_text(json.dumps(spec))
            seconds = _timed([sys.executable, "-m", "bench.bare_reference", str(work / f"{name}.json")])
            out = np.load(work / f"{name}.npz")
            x_adv = out["x_adv"]
            success = criterion.reached(model.ort_scores(x_adv), target)
            l2 = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
            return seconds, {"success": float(success.mean()), "mean_l2": float(l2[success].mean()) if success.any()
                             else None, "mean_calls": float(out["model_calls"].mean()), "max_iter": max_iter,
                             "imported": json.loads(str(out["imported"]))}

        matched_iter = max(1, math.ceil(ours["mean_calls"] / 20))
        matched_s: list[float] = []
        for round_ in range(rounds):
            seconds, matched = reference("matched", matched_iter, abort_early=False)
            matched_s.append(seconds)
            if round_ < rounds - 1:
                ours_s.append(engine())
        figures = {"rows": rows, "attacked": int(attacked.sum()),
                   "ours": {**ours, "process_s": [round(s, 3) for s in ours_s]},
                   "reference_equal_calls": {**matched, "process_s": [round(s, 3) for s in matched_s]},
                   "ratio_equal_calls": statistics.median(ours_s) / statistics.median(matched_s)}
        seconds, full = reference("published", 1000, abort_early=True)
        figures["reference_published"] = {**full, "process_s": round(seconds, 3)}
        figures["ratio_published"] = statistics.median(ours_s) / seconds
    return figures


if __name__ == "__main__":
    print(json.dumps(whole_process(int(sys.argv[1]) if len(sys.argv) > 1 else 32), indent=1))
