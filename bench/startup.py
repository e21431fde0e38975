"""Fixed cost of a run: process start to the attack's first step, as a share of a whole default `attack`
run (the zoo CNN, 32 rows), measured on a real CLI process (bench/startup_probe.py stamps the times)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs


def startup(rows: int = 32, device: str = "cpu", extra: tuple[str, ...] = ()) -> dict:
    """startup_s (process start -> first model call of the attack), its parts (imports; load, conversion
    and fidelity check), exit_s (the command done -> the process gone: the interpreter's exit) and the
    whole process's wall time for a default ml-cw run on `rows` rows."""
    model = build("digits-mosaic").path
    with tempfile.TemporaryDirectory() as folder:
        inputs, out, stamps = Path(folder) / "x.npy", Path(folder) / "r.h5", Path(folder) / "stamps.json"
        np.save(inputs, test_inputs("digits-mosaic", rows))
        command = [sys.executable, "-m", "bench.startup_probe", str(stamps), "--", "attack", str(model), str(inputs),
                   "-o", str(out), "--device", device, *extra]
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"the attack run failed ({done.returncode}): {done.stderr[-2000:]}")
        marks = json.loads(stamps.read_text())
    total = ended - started
    first = marks["first_step"] - started
    return {"startup_s": round(first, 3), "startup_share": first / total, "rows": rows,
            "imports_s": round(marks["imported"] - started, 3),
            "load_s": round(marks["first_step"] - marks["imported"], 3), "exit_s": round(ended - marks["exiting"], 3),
            "process_s": round(total, 3)}


if __name__ == "__main__":
    print(json.dumps(startup(int(sys.argv[1]) if len(sys.argv) > 1 else 32, extra=tuple(sys.argv[2:]))))
