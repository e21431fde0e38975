"""Black-box attacks against the routes they replace, in onnxruntime queries (machine-independent; wall
times on a shared machine are not): every figure is a full `run_attack` on the same rows, target and
budget, success judged by onnxruntime on the original model.

- square_queries_ratio: mean queries per success of ml-square / the NES route (ml-pgd on gradients
  estimated from onnxruntime queries), yeast-forest hide-single, same eps (L-inf) and --max-queries.
  Goal <= 0.1 at >= the NES route's success. `details` also holds ML-CW on estimated gradients.
- square_vs_whitebox_success: ml-square's success at --max-queries 1000 / white-box ml-pgd's at the same
  L-inf eps, digits-mosaic hide-single. Goal >= 0.9.
- hsj_l2_ratio: ml-hsj (labels only, --max-queries 5000) mean L2 / white-box ML-CW mean L2 on the rows
  both reach, digits-mosaic hide-single (reported; no goal).
- single_label: a single-label scikit-learn MLP on digits (8 x 8), its softmax probabilities attacked by
  ml-square (--target random: another class above 0.5, the predicted one below) and its label output
  alone by ml-hsj: success and mean / median queries.

    python -m bench.blackbox [--count 16] [--out bench/results.json]   (merges its keys into --out,
                                                                       details under details.blackbox)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnx
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

from onnxattack import AttackConfig, run_attack
from onnxattack.report import summarize
from onnxattack.results import ResultFile

YEAST_BOX = (-1.0, 1.0)


def attack(model: Path, inputs: Path, out: Path, **settings) -> dict:
    """One run; its summary plus the per-row columns the ratios need."""
    started = time.monotonic()
    run_attack(model, inputs, out, AttackConfig(device="cpu", overwrite=True, **settings))
    summary = summarize(out)
    with ResultFile.open(out) as results:
        summary["rows_success"] = results.success.copy()
        summary["rows_l2"] = results.column("l2").astype(np.float64)
        summary["rows_queries"] = results.column("queries").astype(np.int64)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def brief(summary: dict) -> dict:
    keys = ("method", "attacked", "successes", "success_rate", "l2_mean", "linf_mean", "queries_mean",
            "queries_mean_success", "queries_median_success", "model_calls_mean", "wall_s")
    return {key: summary.get(key) for key in keys}


def square_against_nes(folder: Path, count: int, eps: float, budget: int) -> dict:
    model, inputs = build("yeast-forest").path, folder / "yeast.npy"
    np.save(inputs, test_inputs("yeast-forest", count))
    common = dict(target="hide-single", box=YEAST_BOX, max_queries=budget)
    square = attack(model, inputs, folder / "square.h5", method="ml-square",
                    attack_options={"eps": eps}, **common)
    nes = attack(model, inputs, folder / "nes.h5", method="ml-pgd", gradients="estimate",
                 attack_options={"eps": eps}, **common)
    ratio = square["queries_mean_success"] / nes["queries_mean_success"] if nes["successes"] else None
    return {"eps": eps, "max_queries": budget, "ratio": ratio, "square": brief(square), "nes_ml_pgd": brief(nes)}


def square_against_whitebox(folder: Path, count: int, eps: float, norm: str = "inf") -> dict:
    model, inputs = build("digits-mosaic").path, folder / "digits.npy"
    np.save(inputs, test_inputs("digits-mosaic", count))
    budget = {"eps": eps, "norm": norm}
    square = attack(model, inputs, folder / "square-digits.h5", method="ml-square", target="hide-single",
                    max_queries=1000, attack_options=budget)
    white = attack(model, inputs, folder / "pgd-digits.h5", method="ml-pgd", target="hide-single",
                   attack_options=budget)
    ratio = square["success_rate"] / white["success_rate"] if white["success_rate"] else None
    return {"eps": eps, "norm": norm, "ratio": ratio, "square": brief(square), "whitebox_ml_pgd": brief(white)}


def hsj_against_cw(folder: Path, count: int) -> dict:
    model, inputs = build("digits-mosaic").path, folder / "digits-hsj.npy"
    np.save(inputs, test_inputs("digits-mosaic", count))
    hsj = attack(model, inputs, folder / "hsj.h5", method="ml-hsj", target="hide-single", max_queries=5000)
    cw = attack(model, inputs, folder / "cw.h5", method="ml-cw", target="hide-single")
    both = hsj["rows_success"] & cw["rows_success"]
    ratio = float(hsj["rows_l2"][both].mean() / cw["rows_l2"][both].mean()) if both.any() else None
    return {"ratio": ratio, "rows_both": int(both.sum()), "hsj": brief(hsj), "whitebox_ml_cw": brief(cw)}


def cw_on_estimated_gradients(folder: Path) -> dict:
    """ML-CW hide-single on yeast-forest's estimated gradients (the route ml-square replaces for budgets)."""
    return brief(attack(build("yeast-forest").path, folder / "yeast.npy", folder / "cw-nes.h5", method="ml-cw",
                        target="hide-single", box=YEAST_BOX))


def single_label(folder: Path, count: int, eps: float) -> dict:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)  # [N, 64]: ml-square's windows are runs of 64 features
    mlp = MLPClassifier((64,), max_iter=400, random_state=0).fit(x[:1500], digits.target[:1500])
    exported = to_onnx(mlp, x[:1], options={"zipmap": False}, target_opset=17)
    onnx.save(exported, str(folder / "mlp.onnx"))
    labels = onnx.load(str(folder / "mlp.onnx"))
    keep = [output for output in labels.graph.output if output.name == "label"]
    del labels.graph.output[:]
    labels.graph.output.extend(keep)
    onnx.save(labels, str(folder / "mlp-label.onnx"))
    inputs = folder / "mlp-x.npy"
    np.save(inputs, x[1500:1500 + count])
    square = attack(folder / "mlp.onnx", inputs, folder / "mlp-square.h5", method="ml-square", target="random",
                    scores="softmax", output="probabilities", max_queries=1000, attack_options={"eps": eps})
    hsj = attack(folder / "mlp-label.onnx", inputs, folder / "mlp-hsj.h5", method="ml-hsj", target="random",
                 max_queries=1000)
    return {"eps": eps, "square_softmax": brief(square), "hsj_labels": brief(hsj)}


def figures(count: int) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        forest = square_against_nes(folder, count, 0.1, 10_000)
        forest_tight = square_against_nes(folder, count, 0.05, 10_000)
        cw = cw_on_estimated_gradients(folder)
        digits = square_against_whitebox(folder, count, 0.1)
        digits_l2 = square_against_whitebox(folder, count, 0.5, "2")
        hsj = hsj_against_cw(folder, max(4, count // 2))
        sanity = single_label(folder, count, 0.2)
    return {
        "square_queries_ratio": forest["ratio"],
        "square_vs_whitebox_success": digits["ratio"],
        "hsj_l2_ratio": hsj["ratio"],
        "single_label_queries": {"ml-square softmax": [sanity["square_softmax"]["queries_mean"],
                                                       sanity["square_softmax"]["queries_median_success"]],
                                 "ml-hsj labels": [sanity["hsj_labels"]["queries_mean"],
                                                   sanity["hsj_labels"]["queries_median_success"]]},
        "details_blackbox": {"yeast_forest_eps_0.1": forest, "yeast_forest_eps_0.05": forest_tight,
                             "yeast_forest_ml_cw_estimated": cw, "digits_mosaic": digits,
                             "digits_mosaic_l2": digits_l2, "hsj": hsj,
                             "single_label": sanity, "rows": count,
                             "seconds": round(time.monotonic() - started, 1)},
    }


@click.command()
@click.option("--count", type=int, default=16, show_default=True, help="Inputs per case (ml-hsj: half).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/results.json", show_default=True)
def main(count: int, out: str) -> None:
    result = json.loads(json.dumps(figures(count), default=float))
    click.echo(json.dumps(result, indent=1))
    path = Path(out)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.setdefault("details", {})["blackbox"] = result.pop("details_blackbox")
    merged.update(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
