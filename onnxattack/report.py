"""Summaries and figures from a result file (never from memory: the file is the record)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .results import ResultFile
from .safety import atomic_write

_CHUNK = 4096


def summarize(path: str | os.PathLike) -> dict:
    """The run's figures: counts, success, norms over successes, torch/onnxruntime agreement."""
    with ResultFile.open(path) as results:
        return summarize_run(results)


def summarize_run(results: ResultFile) -> dict:
    """summarize() of an open run (a result file, or one epsilon of a curve)."""
    attrs, rows = results.attrs, results.rows
    attacked, success = results.attacked, results.success
    agrees = results.column("torch_agrees").astype(bool)
    l2, linf = results.column("l2"), results.column("linf")
    # counts as floats, NaN as 0: a hand-edited file may hold them as floats (int() of NaN would raise)
    queries, calls = (np.nan_to_num(results.column(name).astype(np.float64)) for name in ("queries", "model_calls"))
    nonfinite = np.zeros(rows, dtype=bool)
    hamming = np.zeros(rows)
    # untargeted top-k: y_target marks the labels that must leave the top k; count those still in it
    exclusion = attrs.get("task") == "top-k-exclusion"
    for start in range(0, rows, _CHUNK):  # streamed: label arrays can be large
        stop = min(rows, start + _CHUNK)
        adv, goal = results.column("y_adv", start, stop), results.column("y_target", start, stop)
        hamming[start:stop] = ((adv & goal) if exclusion else (adv != goal)).sum(1)
        for name in ("scores", "scores_adv"):
            nonfinite[start:stop] |= ~np.isfinite(results.column(name, start, stop)).all(axis=1)
    stall = results.column("stall_reason")
    reasons = results.json_attr("stall_reasons", {})
    stalled = {reasons.get(str(code), f"code {code}"): int((stall == code).sum())
               for code in np.unique(stall[stall > 0])}
    transfer = {name: {key: float(value) if isinstance(value, float) else value for key, value in group.items()}
                for name, group in results.transfers().items()}
    n_attacked = int(attacked.sum())
    n_success = int(success.sum())

    def stat(values: np.ndarray, fn) -> float | None:
        return float(fn(values)) if values.size else None

    gradients = attrs.get("gradients", "torch")
    return {
        "file": str(results.path), "model": attrs.get("model_name"), "method": attrs.get("method"),
        "target": attrs.get("target"), "scores_kind": attrs.get("scores_kind"),
        "inputs": int(attrs.get("n_inputs", rows)), "rows": rows, "complete": bool(attrs.get("complete")),
        "attacked": n_attacked, "skipped": rows - n_attacked, "successes": n_success,
        "success_rate": n_success / n_attacked if n_attacked else 0.0,
        "l2_mean": stat(l2[success], np.mean), "l2_median": stat(l2[success], np.median),
        "linf_mean": stat(linf[success], np.mean), "linf_median": stat(linf[success], np.median),
        "hamming_to_target_mean": stat(hamming[attacked], np.mean),
        # with estimated gradients there is no torch graph: nothing to agree with
        "torch_agreement": (float(agrees[attacked].mean()) if n_attacked else 1.0) if gradients == "torch" else None,
        "torch_disagreements": int((~agrees[attacked]).sum()) if gradients == "torch" else None,
        "elapsed_s": float(attrs.get("elapsed_s", 0.0)),
        "gradients": gradients,
        "model_calls_mean": stat(calls[attacked], np.mean) if calls.size else None,
        "model_calls_total": int(calls.sum()) if calls.size else None,
        "model_calls_max": int(calls[attacked].max()) if calls.size and n_attacked else None,
        "call_budget": _budget(results.params),
        "queries_mean": stat(queries[attacked], np.mean) if queries.size else None,
        "queries_max": int(queries[attacked].max()) if queries.size and n_attacked else None,
        "queries_mean_success": stat(queries[success], np.mean) if queries.size else None,
        "queries_median_success": stat(queries[success], np.median) if queries.size else None,
        "nonfinite_rows": [int(i) for i in np.flatnonzero(nonfinite)],
        "stalled_rows": stalled,
        "notes": results.json_attr("notes", []),
        "transfer": transfer,
    }


def _budget(params: dict) -> int | None:
    """--budget CALLS of the run (None when it had none, or the stored value is not a count)."""
    value = params.get("budget") if isinstance(params, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def format_summary(summary: dict) -> str:
    def num(value, fmt="{:.4f}"):
        return "-" if value is None else fmt.format(value)

    lines = [
        ("model", summary["model"]), ("method / target", f"{summary['method']} / {summary['target']}"),
        ("inputs", f"{summary['rows']} of {summary['inputs']}" + ("" if summary["complete"] else " (incomplete)")),
        ("attacked", summary["attacked"]), ("skipped", summary["skipped"]),
        ("success rate (onnxruntime)", f"{summary['success_rate']:.1%} ({summary['successes']}/{summary['attacked']})"),
        ("L2 mean / median", f"{num(summary['l2_mean'])} / {num(summary['l2_median'])}"),
        ("Linf mean / median", f"{num(summary['linf_mean'])} / {num(summary['linf_median'])}"),
        ("torch/onnxruntime agreement", _no_agreement(summary.get("gradients"))
         if summary["torch_agreement"] is None else
         f"{summary['torch_agreement']:.1%} ({summary['torch_disagreements']} disagreements)"),
        ("time", f"{summary['elapsed_s']:.1f} s"),
        ("model calls per input", f"{num(summary.get('model_calls_mean'), '{:.0f}')} (forward + backward passes, "
                                  f"{summary.get('model_calls_total') or 0} in all)"),
    ]
    if summary.get("call_budget") is not None:
        lines.append(("call budget", f"{summary['call_budget']} per input; used mean "
                                      f"{num(summary.get('model_calls_mean'), '{:.0f}')}, max "
                                      f"{summary.get('model_calls_max')}"))
    if summary.get("gradients") in ("estimated", "none"):
        how = "estimated" if summary["gradients"] == "estimated" else "none (a black box)"
        lines.append(("gradients", f"{how}: {num(summary['queries_mean'], '{:.0f}')} onnxruntime queries per "
                                   f"attacked input (max {summary['queries_max']})"))
        lines.append(("queries per success", f"mean {num(summary.get('queries_mean_success'), '{:.0f}')} / median "
                                             f"{num(summary.get('queries_median_success'), '{:.0f}')}"))
    for reason, count in summary.get("stalled_rows", {}).items():
        lines.append(("stopped early", f"{count} row(s): {reason}"))
    if summary.get("nonfinite_rows"):
        shown = ", ".join(map(str, summary["nonfinite_rows"][:10]))
        lines.append(("NaN/inf scores", f"{len(summary['nonfinite_rows'])} row(s): {shown} (kept, never a success)"))
    for name, rates in summary.get("transfer", {}).items():
        lines.append((f"transfer to {name}", f"success {rates.get('success_rate', 0):.1%}, "
                                             f"flip {rates.get('flip_rate', 0):.1%}"))
    width = max(len(key) for key, _ in lines)
    text = "\n".join(f"{key.ljust(width)}  {value}" for key, value in lines)
    for note in summary.get("notes", []):
        text += f"\nnote: {note}"
    return text


def _no_agreement(gradients: str | None) -> str:
    if gradients == "none":
        return "n/a (a black box: the attack saw onnxruntime's scores only)"
    return "n/a (no torch graph: gradients estimated from onnxruntime queries)"


def _near_threshold(value: float, threshold: float | None) -> str:
    """Enough digits to show on which side of the threshold the value lies (0.4998, not 0.500)."""
    for digits in range(3, 8):
        text = f"{value:.{digits}f}"
        if threshold is None or float(text) != threshold:
            return text
    return f"{value:.3g}"


_MAX_BARS = 24  # labels shown per bar chart; beyond this only the labels that matter are drawn
_CLEAN, _ADVERSARIAL, _FLIP, _TARGET = "#8fa8c8", "#d9622b", "#c0392b", "#e3f1dc"


@dataclass(frozen=True)
class _Example:
    index: int
    x: np.ndarray
    x_adv: np.ndarray
    scores: np.ndarray
    scores_adv: np.ndarray
    y_pred: np.ndarray
    y_target: np.ndarray
    y_adv: np.ndarray
    success: bool
    l2: float


@dataclass(frozen=True)
class _Run:
    labels: list[str]
    threshold: float | None  # None for ranking runs: their verdicts come from the top k, not a threshold
    scores_kind: str
    title: str
    examples: list[_Example]
    l2_success: np.ndarray
    successes: int
    attacked: int


def _read_run(path: str | os.PathLike, examples: int) -> _Run:
    with ResultFile.open(path) as results:
        attrs = results.attrs
        success, attacked = results.success, results.attacked
        l2 = results.column("l2").astype(np.float64)
        labels = results.labels
        # Successes first, then failures; inputs that were skipped (nothing to attack) are not shown.
        picked = np.concatenate([np.flatnonzero(success), np.flatnonzero(attacked & ~success)])[:examples]
        fields = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv")
        chosen = [_Example(index=int(i), success=bool(success[i]), l2=float(l2[i]),
                           **{name: results.take(name, int(i)) for name in fields}) for i in picked]
    ranking = attrs.get("task", "classification") != "classification"  # top-k tasks have no threshold
    threshold = None if ranking else float(attrs.get("threshold", 0.5))
    title = f"{attrs.get('model_name') or Path(path).stem}: {attrs.get('method')} / target {attrs.get('target')}"
    return _Run(labels, threshold, str(attrs.get("scores_kind", "scores")), title, chosen, l2[success],
                int(success.sum()), int(attacked.sum()))


def as_image(sample: np.ndarray) -> np.ndarray | None:
    """HxW or HxWxC for display; None when the sample is not image-like."""
    if sample.ndim == 2:
        return sample
    if sample.ndim == 3:
        if sample.shape[0] in (1, 3) and sample.shape[2] not in (1, 3):
            sample = sample.transpose(1, 2, 0)
        if sample.shape[2] == 1:
            return sample[:, :, 0]
        if sample.shape[2] == 3:
            return sample
    return None


def _names(labels: list[str], mask: np.ndarray, most: int = 6) -> str:
    chosen = [labels[i] for i in np.flatnonzero(mask)]
    if not chosen:
        return "\u2205"  # the empty set
    more = f", +{len(chosen) - most} more" if len(chosen) > most else ""
    return "{" + ", ".join(chosen[:most]) + more + "}"


def _shown_labels(example: _Example) -> np.ndarray:
    """All labels when few; otherwise those predicted, targeted or flipped, then the highest scores."""
    count = len(example.scores)
    if count <= _MAX_BARS:
        return np.arange(count)
    needed = np.flatnonzero(example.y_pred | example.y_target | example.y_adv)[:_MAX_BARS]
    rest = [i for i in np.argsort(-np.maximum(example.scores, example.scores_adv)) if i not in set(needed)]
    return np.sort(np.concatenate([needed, rest[:_MAX_BARS - len(needed)]]).astype(int))


def _draw_images(figure, cells, example: _Example) -> None:
    x, x_adv = example.x.astype(np.float64), example.x_adv.astype(np.float64)
    delta = x_adv - x
    scale = float(np.abs(delta).max()) or 1.0
    low, high = min(x.min(), x_adv.min()), max(x.max(), x_adv.max())
    clean, adversarial, change = as_image(x), as_image(x_adv), as_image(delta)
    assert clean is not None and adversarial is not None and change is not None  # callers check image-likeness
    panels: list[tuple[Any, ...]]
    if clean.ndim == 2:
        panels = [(clean, "clean", "gray", low, high), (adversarial, "adversarial", "gray", low, high),
                  (change, f"perturbation (\u00b1{scale:.2f})", "RdBu_r", -scale, scale)]
    else:  # colour: rescaled to [0, 1] for display, the perturbation amplified around grey
        span = (high - low) or 1.0
        panels = [((clean - low) / span, "clean", None, None, None),
                  ((adversarial - low) / span, "adversarial", None, None, None),
                  (np.clip(0.5 + change / (2 * scale), 0, 1), f"perturbation x{0.5 / scale:.1f}",
                   None, None, None)]
    for cell, (image, title, cmap, vmin, vmax) in zip(cells, panels, strict=True):
        axis = figure.add_subplot(cell)
        axis.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])


def _draw_feature_perturbation(figure, cell, example: _Example) -> None:
    """Flat inputs: the perturbation per feature, in place of images."""
    delta = (example.x_adv.astype(np.float64) - example.x.astype(np.float64)).ravel()
    axis = figure.add_subplot(cell)
    axis.bar(np.arange(delta.size), delta, width=1.0, color=np.where(delta >= 0, "#b2182b", "#2166ac"))
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_title(f"perturbation per feature ({delta.size})", fontsize=9)
    axis.set_xlabel("feature", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.set_xlim(-0.5, delta.size - 0.5)


def _tick_name(label: str, flipped: bool, wanted: bool) -> str:
    if not flipped:
        return label
    return ("\u25b2 " if wanted else "\u25bc ") + label


def _draw_scores(figure, cell, example: _Example, run: _Run) -> None:
    shown = _shown_labels(example)
    positions = np.arange(len(shown))
    axis = figure.add_subplot(cell)
    target = example.y_target[shown].astype(bool)
    flip = example.y_target[shown] != example.y_pred[shown]
    for position in positions[target]:
        axis.axvspan(position - 0.5, position + 0.5, color=_TARGET, zorder=0)
    axis.bar(positions - 0.2, example.scores[shown], width=0.4, color=_CLEAN, label="clean", zorder=2)
    axis.bar(positions + 0.2, example.scores_adv[shown], width=0.4, color=_ADVERSARIAL, label="adversarial",
             zorder=2)
    if run.threshold is not None:
        axis.axhline(run.threshold, color="black", linestyle="--", linewidth=1, zorder=3)
    if run.scores_kind == "probabilities":
        axis.set_ylim(0, 1.08)
    names = [_tick_name(run.labels[i], bool(flipped), bool(wanted))
             for i, flipped, wanted in zip(shown, flip, target, strict=True)]
    crowded = sum(len(name) for name in names) > 100
    axis.set_xticks(positions, names, rotation=45 if crowded else 0, ha="right" if crowded else "center",
                    fontsize=8)
    for tick, flipped in zip(axis.get_xticklabels(), flip, strict=True):
        if flipped:
            tick.set_color(_FLIP)
            tick.set_fontweight("bold")
    for position, value in zip(positions[flip], example.scores_adv[shown][flip], strict=True):
        # The value the attack left on a flipped label: often just past the threshold.
        axis.annotate(_near_threshold(float(value), run.threshold), (position + 0.2, value), xytext=(0, 2),
                      textcoords="offset points",
                      ha="center", va="bottom", fontsize=7, color=_FLIP, zorder=4)
    axis.set_xlim(-0.6, len(shown) - 0.4)
    axis.tick_params(axis="y", labelsize=7)
    axis.set_ylabel(run.scores_kind, fontsize=8)
    verdict = "success" if example.success else "FAILED"
    axis.set_title(f"input #{example.index}: {verdict} (L2 {example.l2:.3f}), target "
                   f"{_names(run.labels, example.y_target)}\nclean {_names(run.labels, example.y_pred)} "
                   f"\u2192 adversarial {_names(run.labels, example.y_adv)}", fontsize=9,
                   color="#1b7837" if example.success else _FLIP)


def _legend_handles(run: _Run) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Patch(color=_CLEAN, label="clean score"), Patch(color=_ADVERSARIAL, label="adversarial score"),
            Line2D([], [], color="black", linestyle="--", label=_threshold_label(run)),
            Patch(color=_TARGET, label="in the target set"),
            Line2D([], [], color=_FLIP, marker="$\u25b2$", linestyle="", label="attack must turn on"),
            Line2D([], [], color=_FLIP, marker="$\u25bc$", linestyle="", label="attack must turn off")]


def _threshold_label(run: _Run) -> str:
    if run.threshold is None:
        return "no threshold (ranking: the top k count)"
    return f"decision threshold ({run.threshold:g} in {run.scores_kind})"


def _draw_l2(figure, cell, run: _Run) -> None:
    axis = figure.add_subplot(cell)
    if run.l2_success.size:
        axis.hist(run.l2_success, bins=min(20, max(5, run.l2_success.size // 2)), color=_ADVERSARIAL,
                  edgecolor="white")
    axis.set_title(f"L2 norm of the successful perturbations\n{run.successes} of {run.attacked} attacked "
                   "inputs reached their target", fontsize=9)
    axis.set_xlabel("L2 (input units)", fontsize=8)
    axis.set_ylabel("inputs", fontsize=8)
    axis.tick_params(labelsize=7)


def figure_path(png: str | os.PathLike) -> Path:
    """Where the figure is written: matplotlib adds .png to a name without a suffix."""
    png = Path(png)
    return png if png.suffix else png.with_name(png.name + ".png")


def write_figure(path: str | os.PathLike, png: str | os.PathLike, examples: int = 4) -> Path:
    """Per example (successes first): clean and adversarial input, the perturbation, and the label scores
    before and after against the threshold, with the target set marked; then the L2 histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("--png needs matplotlib: pip install 'onnxattack[report]'") from None
    run = _read_run(path, examples)
    image_like = bool(run.examples) and as_image(run.examples[0].x.astype(np.float64)) is not None
    rows = len(run.examples)
    figure = plt.figure(figsize=(14, 2.9 * rows + 2.6), layout="constrained")
    figure.suptitle(run.title, fontsize=11, fontweight="bold")
    grid = figure.add_gridspec(rows + 1, 4 if image_like else 2,
                               width_ratios=[1, 1, 1, 4.2] if image_like else [1.6, 4.2],
                               height_ratios=[2.9] * rows + [2.2])
    for row, example in enumerate(run.examples):
        if image_like:
            _draw_images(figure, [grid[row, col] for col in range(3)], example)
        else:
            _draw_feature_perturbation(figure, grid[row, 0], example)
        _draw_scores(figure, grid[row, -1], example, run)
    if not run.examples:
        figure.text(0.5, 0.6, "no attacked inputs to show", ha="center", fontsize=10)
    _draw_l2(figure, grid[rows, :-1] if rows and image_like else grid[rows, 0], run)
    legend_axis = figure.add_subplot(grid[rows, -1])
    legend_axis.axis("off")
    legend_axis.legend(handles=_legend_handles(run), loc="center", ncol=3, fontsize=8, frameon=False)
    png = figure_path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(png) as temp:  # an earlier figure stays whole until this one is
            figure.savefig(temp, dpi=100, format="png")
    finally:
        plt.close(figure)
    return png
