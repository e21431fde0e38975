"""Summaries and figures from a result file (never from memory: the file is the record)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .store import json_attr, open_results, read_attrs

_CHUNK = 4096


def _column(handle, name: str) -> np.ndarray:
    return np.asarray(handle[name][:]) if name in handle else np.zeros(0)


def summarize(path: str | os.PathLike) -> dict:
    """The run's figures: counts, success, norms over successes, torch/onnxruntime agreement."""
    with open_results(path) as handle:
        attrs = read_attrs(handle)
        rows = int(attrs.get("rows_written", handle["success"].shape[0]))
        success = _column(handle, "success")[:rows].astype(bool)
        attacked = _column(handle, "attacked")[:rows].astype(bool)
        agrees = _column(handle, "torch_agrees")[:rows].astype(bool)
        l2 = _column(handle, "l2")[:rows]
        linf = _column(handle, "linf")[:rows]
        hamming = np.zeros(rows)
        for start in range(0, rows, _CHUNK):  # streamed: label arrays can be large
            stop = min(rows, start + _CHUNK)
            hamming[start:stop] = (handle["y_adv"][start:stop] != handle["y_target"][start:stop]).sum(1)
        transfer = {}
        if "transfer" in handle:
            for name, group in handle["transfer"].items():
                transfer[name] = {key: float(value) if isinstance(value, (float, np.floating)) else
                                  (int(value) if isinstance(value, (int, np.integer)) else str(value))
                                  for key, value in group.attrs.items()}
    n_attacked = int(attacked.sum())
    n_success = int(success.sum())

    def stat(values: np.ndarray, fn) -> float | None:
        return float(fn(values)) if values.size else None

    return {
        "file": str(path), "model": attrs.get("model_name"), "method": attrs.get("method"),
        "target": attrs.get("target"), "scores_kind": attrs.get("scores_kind"),
        "inputs": int(attrs.get("n_inputs", rows)), "rows": rows, "complete": bool(attrs.get("complete")),
        "attacked": n_attacked, "skipped": rows - n_attacked, "successes": n_success,
        "success_rate": n_success / n_attacked if n_attacked else 0.0,
        "l2_mean": stat(l2[success], np.mean), "l2_median": stat(l2[success], np.median),
        "linf_mean": stat(linf[success], np.mean), "linf_median": stat(linf[success], np.median),
        "hamming_to_target_mean": stat(hamming[attacked], np.mean),
        "torch_agreement": float(agrees[attacked].mean()) if n_attacked else 1.0,
        "torch_disagreements": int((~agrees[attacked]).sum()),
        "elapsed_s": float(attrs.get("elapsed_s", 0.0)),
        "notes": json.loads(attrs.get("notes", "[]")),
        "transfer": transfer,
    }


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
        ("torch/onnxruntime agreement", f"{summary['torch_agreement']:.1%} "
                                        f"({summary['torch_disagreements']} disagreements)"),
        ("time", f"{summary['elapsed_s']:.1f} s"),
    ]
    for name, rates in summary.get("transfer", {}).items():
        lines.append((f"transfer to {name}", f"success {rates.get('success_rate', 0):.1%}, "
                                             f"flip {rates.get('flip_rate', 0):.1%}"))
    width = max(len(key) for key, _ in lines)
    text = "\n".join(f"{key.ljust(width)}  {value}" for key, value in lines)
    for note in summary.get("notes", []):
        text += f"\nnote: {note}"
    return text


def _as_image(sample: np.ndarray) -> np.ndarray | None:
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


def _names(labels: list[str], mask: np.ndarray) -> str:
    chosen = [labels[i] for i in np.flatnonzero(mask)]
    return ",".join(chosen) if chosen else "(none)"


def write_figure(path: str | os.PathLike, png: str | os.PathLike, examples: int = 4) -> Path:
    """Clean / adversarial / amplified perturbation for a few successes, plus the norm histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("--png needs matplotlib: pip install 'onnxattack[report]'") from None
    with open_results(path) as handle:
        labels = json_attr(handle, "labels", [])
        success = np.asarray(handle["success"][:], dtype=bool)
        l2 = np.asarray(handle["l2"][:])
        picked = np.flatnonzero(success)[:examples]
        samples = [(handle["x"][i], handle["x_adv"][i], handle["y_pred"][i], handle["y_adv"][i]) for i in picked]
    image_like = bool(samples) and _as_image(np.asarray(samples[0][0], dtype=np.float64)) is not None
    rows = len(samples) if image_like else 0
    figure = plt.figure(figsize=(9, 2.6 * rows + 2.8))
    grid = figure.add_gridspec(rows + 1, 3)
    for row, (x, x_adv, y_pred, y_adv) in enumerate(samples if image_like else []):
        x, x_adv = np.asarray(x, dtype=np.float64), np.asarray(x_adv, dtype=np.float64)
        delta = x_adv - x
        scale = np.abs(delta).max() or 1.0
        low, high = min(x.min(), x_adv.min()), max(x.max(), x_adv.max())
        panels = [(_as_image(x), f"clean: {_names(labels, y_pred)}", (low, high)),
                  (_as_image(x_adv), f"adversarial: {_names(labels, y_adv)}", (low, high)),
                  (_as_image(0.5 + delta / (2 * scale)), f"perturbation x{0.5 / scale:.1f}", (0, 1))]
        for col, (image, title, (vmin, vmax)) in enumerate(panels):
            axis = figure.add_subplot(grid[row, col])
            cmap = "gray" if image.ndim == 2 else None
            shown = image if image.ndim == 2 else np.clip((image - vmin) / ((vmax - vmin) or 1), 0, 1)
            axis.imshow(shown, cmap=cmap, vmin=vmin if image.ndim == 2 else None,
                        vmax=vmax if image.ndim == 2 else None)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    axis = figure.add_subplot(grid[rows, :])
    if success.any():
        axis.hist(l2[success], bins=20, color="tab:blue")
    axis.set_xlabel("L2 norm of successful perturbations (input units)")
    axis.set_ylabel("inputs")
    figure.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png
