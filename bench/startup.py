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


def startup_warm(rows: int = 32, device: str = "cpu", rounds: int = 2) -> dict:
    """The same run handed to a warm `onnxattack serve` (bench/startup_probe.py --serve) by the console script
    (bench/warm_client.py): startup_s from the caller's start to the first step in the server's fork, as a
    share of the caller's whole process; the fastest of `rounds` runs (each a fresh fork of one server)."""
    import os

    model = build("digits-mosaic").path
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        (where / "run").mkdir(mode=0o700)
        socket_path, log = where / "run" / "server.sock", where / "server.log"
        np.save(where / "x.npy", test_inputs("digits-mosaic", rows))
        environment = {**os.environ, "ONNXATTACK_SERVER": "off"}
        with log.open("w") as log_file:
            server = subprocess.Popen([sys.executable, "-m", "bench.startup_probe", "--serve", str(socket_path)],
                                      stderr=log_file, stdout=subprocess.DEVNULL, env=environment)
        try:
            deadline = time.time() + 300
            while "serving on" not in log.read_text():
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            runs = []
            for number in range(rounds):
                stamps, out = where / f"stamps{number}.json", where / f"r{number}.h5"
                command = [sys.executable, "-m", "bench.warm_client", "attack", str(model), str(where / "x.npy"),
                           "-o", str(out), "--device", device]
                caller = {**environment, "ONNXATTACK_SERVER": str(socket_path), "ONNXATTACK_BENCH_STAMPS": str(stamps)}
                started = time.time()
                done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=caller)
                ended = time.time()
                if done.returncode != 0 or not stamps.exists():
                    raise RuntimeError(f"the warm run failed ({done.returncode}): {done.stderr[-2000:]}")
                first = json.loads(stamps.read_text())["first_step"] - started
                runs.append({"startup_s": round(first, 3), "process_s": round(ended - started, 3),
                             "startup_share": first / (ended - started)})
        finally:
            server.send_signal(2)
            server.wait(timeout=60)
    best = min(runs, key=lambda run: run["startup_s"])
    return {**best, "rows": rows, "runs": runs}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--warm"]:
        print(json.dumps(startup_warm()))
        sys.exit()
    print(json.dumps(startup(int(sys.argv[1]) if len(sys.argv) > 1 else 32, extra=tuple(sys.argv[2:]))))
