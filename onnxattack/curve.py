"""A robustness curve: attack success against the budget epsilon, one full pass per epsilon.

Each pass is an ordinary resumable run (`engines.run`) into a part file next to the output; once
every pass is complete they are gathered into one HDF5 file, a group per epsilon
(`eps/<value>`, holding that run's datasets and attributes), written under a temporary name and
renamed, so the output is never half written. An interrupted curve continues with --resume.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .attacks import METHODS
from .config import AttackConfig
from .errors import BadInputError, ConfigError
from .report import summarize
from .results import CurveFile, ResultFile, check_output_path, copy_run, curve_writer

PassProgress = Callable[[int, int, float], None]  # pass index, passes, epsilon


def parse_eps(text: str) -> list[float]:
    """'0.01,0.02,...' -> distinct positive finite values, in increasing order."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError("eps", f"expected numbers separated by commas, like 0.01,0.02,0.03, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError("eps", f"every epsilon must be a positive number, got {text!r}")
    by_key = {eps_key(v): v for v in values}
    if len(by_key) != len(values):
        raise ConfigError("eps", f"each epsilon once, please (equal to 6 significant digits): {text!r}")
    return sorted(by_key.values())


def eps_key(eps: float) -> str:
    return f"{eps:.6g}"


def part_path(out: Path, eps: float) -> Path:
    return out.with_name(f".{out.name}.eps-{eps_key(eps)}.part.h5")


def run_curve(model_path: str | os.PathLike, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
              config: AttackConfig, eps_values: list[float], progress: Callable | None = None,
              on_pass: PassProgress | None = None) -> dict:
    """Attack the inputs once per epsilon and gather the runs into `out_path`; returns the curve
    (per epsilon: attacked rows, success rate, mean L-inf and L2 of the successful rows)."""
    from .engines import run

    out = Path(out_path)
    if "eps" not in METHODS[config.method].default_values():
        takers = ", ".join(name for name, method in METHODS.items() if "eps" in method.default_values())
        raise ConfigError("method", f"{config.method} takes no --eps budget (curve methods: {takers})")
    if not eps_values:
        raise ConfigError("eps", "give at least one epsilon")
    check_output_path(out, resume=config.resume, overwrite=config.overwrite,
                      inputs=(model_path, inputs_path, config.target_file, config.labels_file), what="curve file")
    if config.resume and out.exists():
        curve = read_curve(out)
        asked = {"method": config.method, "eps": [eps_key(e) for e in eps_values]}
        stored = {"method": curve["method"], "eps": [eps_key(p["eps"]) for p in curve["points"]]}
        if asked != stored:
            raise BadInputError(f"cannot resume {out}: it holds a {stored['method']} curve at eps "
                                f"{','.join(stored['eps'])}, this run asks for {config.method} at "
                                f"{','.join(asked['eps'])}")
        return curve
    parts = []
    for index, eps in enumerate(eps_values):
        part = part_path(out, eps)
        resume = config.resume and part.exists()
        settings = replace(config, attack_options={**config.attack_options, "eps": eps}, resume=resume,
                           overwrite=not resume)
        if on_pass:
            on_pass(index, len(eps_values), eps)
        run(model_path, inputs_path, part, settings, progress)
        parts.append(part)
    points = [_curve_point(eps, summarize(part)) for eps, part in zip(eps_values, parts, strict=True)]
    _gather(out, parts, eps_values, points, config)
    for part in parts:
        part.unlink(missing_ok=True)
    return read_curve(out)


def _curve_point(eps: float, summary: dict) -> dict:
    return {"eps": eps, "attacked": summary["attacked"], "successes": summary["successes"],
            "success_rate": summary["success_rate"], "linf_mean": summary["linf_mean"],
            "l2_mean": summary["l2_mean"]}


def _gather(out: Path, parts: list[Path], eps_values: list[float], points: list[dict], config: AttackConfig) -> None:
    with curve_writer(out) as handle:
        for eps, part in zip(eps_values, parts, strict=True):
            copy_run(handle, part, eps_key(eps))
        with ResultFile.open(parts[0]) as first:
            kept = ("model_sha256", "model_name", "method", "target", "seed", "labels", "versions")
            handle.attrs.update({key: first.attrs[key] for key in kept if key in first.attrs})
        handle.attrs.update(kind="curve", eps=json.dumps(eps_values), curve=json.dumps(points),
                            norm=str(config.attack_options.get("norm", "inf")), complete=True,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def read_curve(path: str | os.PathLike) -> dict:
    """The curve stored in a curve file: its method, norm and one point per epsilon."""
    with CurveFile.open(path) as curve:
        attrs = curve.attrs
        return {"file": str(path), "model": attrs.get("model_name"), "method": attrs.get("method"),
                "target": attrs.get("target"), "norm": attrs.get("norm"), "points": curve.points()}


def format_curve(curve: dict) -> str:
    lines = [f"model {curve['model']}  method {curve['method']}  target {curve['target']}  norm {curve['norm']}",
             f"{'eps':>10}  {'attacked':>8}  {'success (onnxruntime)':>22}  {'mean Linf':>9}  {'mean L2':>8}"]
    for point in curve["points"]:
        rate = f"{100 * point['success_rate']:.1f}% ({point['successes']}/{point['attacked']})"
        lines.append(f"{point['eps']:>10.4g}  {point['attacked']:>8}  {rate:>22}  "
                     f"{_number(point['linf_mean']):>9}  {_number(point['l2_mean']):>8}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


def write_curve_figure(curve: dict, png: str | os.PathLike) -> Path:
    """Success rate against epsilon, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve["points"]
    figure, axis = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    axis.plot([p["eps"] for p in points], [100 * p["success_rate"] for p in points], marker="o")
    axis.set_xlabel(f"epsilon (L{'-inf' if curve['norm'] == 'inf' else curve['norm']} budget, input units)")
    axis.set_ylabel("success, judged by onnxruntime (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.set_title(f"{curve['model']}: {curve['method']}, target {curve['target']}", fontsize=10)
    figure.tight_layout()
    path = Path(png)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return path
