"""Success rate and mean L2 of every method and target on the zoo models, at default settings.

    python -m bench.table [--count 16] [--out docs/results.md]

Each row is a real `onnxattack attack` run through the library (success judged by onnxruntime).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

from onnxattack import AttackConfig, run_attack
from onnxattack.report import summarize

RUNS = [
    ("digits-mosaic", method, target)
    for method in ("ml-cw", "ml-deepfool")
    for target in ("hide-single", "hide-all", "random", "extreme")
] + [
    ("digits-ranker", method, target)
    for method in ("rank1", "rank2")
    for target in ("top:3:best", "top:3:random", "top:3:worst")
] + [
    ("yeast-mlp", method, "random") for method in ("ml-cw", "ml-deepfool")
] + [
    ("yeast-forest", "ml-cw", "hide-single"), ("yeast-forest", "ml-cw", "random"),
    ("yeast-forest", "ml-deepfool", "random"),
]


@click.command()
@click.option("--count", type=int, default=16, show_default=True, help="Test inputs per row.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the markdown table here.")
def main(count: int, out: str | None) -> None:
    lines = ["| model | method | target | attacked | success (onnxruntime) | mean L2 | mean Linf | model calls / input "
             "| queries / input | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as folder:
        for model_name, method, target in RUNS:
            model_path = build(model_name).path
            inputs = Path(folder) / f"{model_name}.npy"
            np.save(inputs, test_inputs(model_name, count))
            box = (-1.0, 1.0) if model_name.startswith("yeast") else (0.0, 1.0)
            result = Path(folder) / f"{model_name}-{method}-{target.replace(':', '_')}.h5"
            started = time.monotonic()
            run_attack(model_path, inputs, result, AttackConfig(method=method, target=target, box=box, device="cpu"))
            s = summarize(result)
            l2 = "-" if s["l2_mean"] is None else f"{s['l2_mean']:.3f}"
            linf = "-" if s["linf_mean"] is None else f"{s['linf_mean']:.3f}"
            calls = "-" if s["model_calls_mean"] is None else f"{s['model_calls_mean']:.0f}"
            queries = f"{s['queries_mean']:.0f}" if s["gradients"] == "estimated" and s["queries_mean"] else "-"
            line = (f"| {model_name} | {method} | {target} | {s['attacked']} | {s['success_rate']:.1%} | "
                    f"{l2} | {linf} | {calls} | {queries} | {time.monotonic() - started:.0f} s |")
            print(line, flush=True)
            lines.append(line)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
