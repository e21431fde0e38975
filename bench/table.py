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

Run = tuple[str, str, str, dict]  # model, method, target, options beyond the defaults (shown in the table)

RUNS: list[Run] = [
    ("digits-mosaic", method, target, {})
    for method in ("ml-cw", "ml-deepfool")
    for target in ("hide-single", "hide-all", "random", "extreme")
] + [
    ("digits-ranker", method, target, {})
    for method in ("rank1", "rank2")
    for target in ("top:3:best", "top:3:random", "top:3:worst")
] + [
    ("yeast-mlp", method, "random", {}) for method in ("ml-cw", "ml-deepfool")
] + [
    ("yeast-forest", "ml-cw", "hide-single", {}), ("yeast-forest", "ml-cw", "random", {}),
    ("yeast-forest", "ml-deepfool", "random", {}),
] + [  # the attacks that came after the paper: budgets are stated, the rest is default
    ("digits-mosaic", "ml-pgd", "hide-single", {}),
    ("digits-mosaic", "ml-pgd", "hide-single", {"eps": 0.1}),
    ("digits-mosaic", "ml-pgd", "hide-single", {"norm": "2"}),
    ("digits-mosaic", "mla-lp", "hide-single", {}), ("digits-mosaic", "mla-lp", "random", {}),
    ("yeast-mlp", "ml-pgd", "random", {"eps": 0.1}), ("yeast-mlp", "mla-lp", "random", {}),
    ("digits-ranker", "tkml-t", "top:3:best", {}), ("digits-ranker", "tkml-u", "hide-all", {"top_k": 3}),
    ("digits-mosaic", "tkml-u", "hide-all", {"top_k": 2}),
    ("digits-mosaic", "universal", "hide-single", {"eps": 0.2}),
    ("yeast-mlp", "universal", "-0", {"eps": 0.3}),
    ("digits-ranker", "universal-topk", "hide-all", {"top_k": 1, "eps": 0.3}),
    ("topics-text", "ml-hotflip", "hide-single", {}),  # token ids: L2 and Linf count changed tokens
] + [  # black boxes: onnxruntime queries only (ml-square: scores; ml-hsj: labels), --max-queries 20,000
    ("yeast-forest", "ml-square", "hide-single", {"eps": 0.1}),
    ("digits-mosaic", "ml-square", "hide-single", {"eps": 0.1}),
    ("digits-mosaic", "ml-square", "hide-single", {"norm": "2"}),
    ("yeast-forest", "ml-hsj", "hide-single", {}),
    ("digits-mosaic", "ml-hsj", "hide-single", {}),
]


def _shown(method: str, options: dict) -> str:
    return method + "".join(f" --{name.replace('_', '-')} {value}" for name, value in options.items())


@click.command()
@click.option("--count", type=int, default=16, show_default=True, help="Test inputs per row.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the markdown table here.")
@click.option("--method", "methods", multiple=True, help="Only the rows of these methods (repeatable).")
def main(count: int, out: str | None, methods: tuple[str, ...]) -> None:
    lines = ["| model | method | target | attacked | success (onnxruntime) | mean L2 | mean Linf | model calls / input "
             "| queries / input | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as folder:
        for model_name, method, target, options in RUNS:
            if methods and method not in methods:
                continue
            model_path = build(model_name).path
            rows = test_inputs(model_name, count)
            inputs = Path(folder) / f"{model_name}.{'npz' if isinstance(rows, dict) else 'npy'}"
            if isinstance(rows, dict):  # several inputs (topics-text): the token ids are attacked
                np.savez(inputs, **rows)
            else:
                np.save(inputs, rows)
            attack_input = "input_ids" if isinstance(rows, dict) else None
            box = (-1.0, 1.0) if model_name.startswith("yeast") else (0.0, 1.0)
            result = Path(folder) / f"{model_name}-{method}-{target.replace(':', '_')}-{len(lines)}.h5"
            top_k = options.get("top_k")
            attack_options = {name: value for name, value in options.items() if name != "top_k"}
            started = time.monotonic()
            run_attack(model_path, inputs, result, AttackConfig(method=method, target=target, box=box, device="cpu",
                                                                top_k=top_k, attack_options=attack_options,
                                                                attack_input=attack_input))
            s = summarize(result)
            l2 = "-" if s["l2_mean"] is None else f"{s['l2_mean']:.3f}"
            linf = "-" if s["linf_mean"] is None else f"{s['linf_mean']:.3f}"
            calls = "-" if s["model_calls_mean"] is None else f"{s['model_calls_mean']:.0f}"
            queries = f"{s['queries_mean']:.0f}" if s["gradients"] != "torch" and s["queries_mean"] else "-"
            line = (f"| {model_name} | {_shown(method, options)} | {target} | {s['attacked']} | "
                    f"{s['success_rate']:.1%} | {l2} | {linf} | {calls} | {queries} | "
                    f"{time.monotonic() - started:.0f} s |")
            print(line, flush=True)
            lines.append(line)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
