"""The benchmark: every figure measured side by side in one run; a table, then ONE JSON object
(also written to bench/results.json).

    python -m bench.run [--device cpu|cuda|auto] [--count 8] [--out bench/results.json]

Keys (goals in docs/benchmarks.md): search_efficiency, calls_ratio, reference_calls_ratio,
reference_success, reference_l2_ratio, step_overhead, graph_overhead, qp_share, validate_share,
write_share, memory_ratio, startup_s and startup_share (bench/startup.py; the _warm pair: the run handed to
`onnxattack serve`), whole_process_ratio and whole_process_equal_calls_ratio (bench/whole_process.py);
square_queries_ratio, square_vs_whitebox_success, hsj_l2_ratio,
single_label_queries (bench/blackbox.py, in onnxruntime queries); `details` holds the per-case numbers
behind them.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch

from onnxattack.loader import resolve_device

from . import blackbox, overhead, pipeline_costs, search, startup, whole_process

GOALS = {"search_efficiency": 1.05, "calls_ratio": 0.15, "reference_calls_ratio": 0.5, "step_overhead": 1.10,
         "graph_overhead": 1.05, "qp_share": 0.2, "validate_share": 0.05, "write_share": 0.05,
         "memory_ratio": 1.1, "startup_share": 0.1, "startup_share_warm": 0.1, "whole_process_ratio": 0.5,
         "whole_process_equal_calls_ratio": 1.0}


def figures(device: str, count: int, exhaustive_iter: int = 1000, memory_inputs: int = 64) -> dict:
    started = time.monotonic()
    fixed_cost = startup.startup(32, device)
    fixed_cost_warm = startup.startup_warm(32, device)
    processes = whole_process.whole_process(32, device=device)
    cases = search.measure(count, device, exhaustive_iter=exhaustive_iter)
    budget = search.budget_curve(count, device, exhaustive_iter=exhaustive_iter)
    step = overhead.step_overhead(device)
    graph = overhead.graph_overhead(device)
    layout = overhead.layout_speedup(device)
    qp = overhead.qp_share(device)
    jacobian = overhead.jacobian_modes(device)
    shares = pipeline_costs.shares("ml-cw", 32, device)
    shares_deepfool = pipeline_costs.shares("ml-deepfool", 256, device)
    memory = pipeline_costs.memory_ratio(memory_inputs, device)
    black = blackbox.figures(count)
    with_reference = {name: case for name, case in cases.items() if "reference" in case}
    ours = sum(case["default"]["mean_calls"] for case in with_reference.values())
    theirs = sum(case["reference"]["mean_calls"] for case in with_reference.values())
    return {
        "search_efficiency": {name: case["l2_ratio"] for name, case in cases.items()},
        "calls_ratio": {name: case["calls_ratio"] for name, case in cases.items()},
        "reference_calls_ratio": ours / theirs if theirs else None,
        "reference_success": {name: {"ours": case["default"]["success"], "reference": case["reference"]["success"]}
                              for name, case in with_reference.items()},
        "reference_l2_ratio": {name: case["reference_l2_ratio"] for name, case in with_reference.items()},
        "step_overhead": step["ratio"],
        "graph_overhead": graph["ratio"],
        "layout_speedup": {"digits-mosaic": layout["ratio"], "auto": layout["auto"]},
        "qp_share": qp["subset"]["share"],
        "validate_share": max(shares["validate_share"], shares_deepfool["validate_share"]),
        "write_share": max(shares["write_share"], shares_deepfool["write_share"]),
        "memory_ratio": memory["ratio"],
        "startup_s": fixed_cost["startup_s"],
        "startup_share": fixed_cost["startup_share"],
        "startup_s_warm": fixed_cost_warm["startup_s"],
        "startup_share_warm": fixed_cost_warm["startup_share"],
        "whole_process_ratio": processes["ratio_published"],
        "whole_process_equal_calls_ratio": processes["ratio_equal_calls"],
        "budget_curve": {calls: {"success": entry["success"], "mean_l2": entry["mean_l2"],
                                 "dominates_published": entry["dominates_published"],
                                 "dominates_reference": entry["dominates_reference"]}
                         for calls, entry in budget["curve"].items()},
        "jacobian_batched_over_loop": jacobian["batched_over_loop"],
        **{key: value for key, value in black.items() if key != "details_blackbox"},
        "details": {"search": cases, "step": step, "graph": graph, "layout": layout, "qp": qp, "jacobian": jacobian,
                    "pipeline": [shares, shares_deepfool], "memory": memory, "startup": fixed_cost,
                    "startup_warm": fixed_cost_warm,
                    "whole_process": processes,
                    "budget": budget,
                    "blackbox": black["details_blackbox"]},
        "machine": {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "platform": platform.platform(), "inputs_per_search_case": count,
                    "exhaustive_max_iter": exhaustive_iter, "seconds": round(time.monotonic() - started, 1)},
    }


def _worst(value: object) -> float | None:
    if isinstance(value, dict):
        numbers = [v for v in value.values() if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return value if isinstance(value, (int, float)) else None


def table(result: dict) -> str:
    lines = [f"{'key':<24} {'value (worst case)':>18} {'goal':>8}  met"]
    for key, goal in GOALS.items():
        worst = _worst(result[key])
        shown = "-" if worst is None else f"{worst:.3f}"
        met = "-" if worst is None else ("yes" if worst <= goal else "NO")
        lines.append(f"{key:<24} {shown:>18} {'<= ' + str(goal):>8}  {met}")
    for name, entry in result["reference_success"].items():
        lines.append(f"  reference success {name}: ours {entry['ours']:.2f}, reference {entry['reference']:.2f}, "
                     f"L2 ratio {result['reference_l2_ratio'][name]:.3f}")
    processes = result["details"]["whole_process"]
    ours, published = processes["ours"], processes["reference_published"]
    lines.append(f"  whole processes, zoo CNN, {processes['attacked']} rows: onnxattack attack "
                 f"{ours['process_s']} s (success {ours['success']:.2f}, L2 {ours['mean_l2']:.3f}, "
                 f"{ours['mean_calls']:.0f} calls) | bare reference at equal calls "
                 f"{processes['reference_equal_calls']['process_s']} s | published sizes {published['process_s']} s "
                 f"(success {published['success']:.2f}, L2 {published['mean_l2']:.3f}, "
                 f"{published['mean_calls']:.0f} calls)")
    lines.append(f"  layout_speedup (converted CNN fwd+bwd, contiguous / channels-last): "
                 f"{result['layout_speedup']['digits-mosaic']:.2f}; --memory-format auto chose "
                 f"{result['layout_speedup']['auto']}")
    lines.append(f"  black box: square_queries_ratio {result['square_queries_ratio']:.3f} (goal <= 0.1), "
                 f"square_vs_whitebox_success {result['square_vs_whitebox_success']:.3f} (goal >= 0.9), "
                 f"hsj_l2_ratio {result['hsj_l2_ratio']:.3f}")
    for name, case in result["details"]["search"].items():
        d, e = case["default"], case["exhaustive"]
        lines.append(f"  {name}: default success {d['success']:.2f} L2 {d['mean_l2']:.3f} calls {d['mean_calls']:.0f}"
                     f" ({d['seconds']} s) | exhaustive {e['success']:.2f} L2 {e['mean_l2']:.3f}"
                     f" calls {e['mean_calls']:.0f} ({e['seconds']} s)")
    return "\n".join(lines)


@click.command()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--count", type=int, default=8, show_default=True, help="Inputs per search case.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/results.json", show_default=True)
def main(device: str, count: int, out: str) -> None:
    chosen = resolve_device(device).type
    result = figures(chosen, count)
    click.echo(table(result))
    text = json.dumps(result, indent=1, sort_keys=False)
    click.echo(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
