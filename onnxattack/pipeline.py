"""Model file + inputs -> attack -> onnxruntime validation -> HDF5, batch by batch, resumable."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .attacks import METHODS, Attack, Victim
from .errors import BadInputError
from .faults import maybe_crash
from .inputs import InputSource, open_inputs
from .loader import LoadedModel, load
from .runtime import to_input_dtype
from .scores import criterion_for
from .store import ResultWriter
from .targets import TargetSpec, check_target_file, make_targets, parse_target
from .types import Task
from .validate import ort_verdict, torch_reached

Progress = Callable[[int, int, int, int], None]  # rows done, rows total, successes, attacked


@dataclass
class AttackConfig:
    method: str = "ml-cw"
    target: str = "hide-single"
    target_file: str | None = None
    scores: str = "auto"
    threshold: float | None = None
    top_k: int | None = None
    output: str | None = None
    box: tuple[float, float] = (0.0, 1.0)
    max_iter: int | None = None
    batch_size: int = 32
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    labels_file: str | None = None
    key: str | None = None
    tolerance: float = 1e-4
    attack_options: dict = field(default_factory=dict)  # kappa, binary_steps, learning_rate, ...
    image_layout: str = "chw"
    image_scale: float = 1 / 255


def build_attack(method: str, max_iter: int | None, options: dict) -> Attack:
    if method not in METHODS:
        raise BadInputError(f"unknown method {method!r} (expected one of: {', '.join(METHODS)})")
    kwargs = dict(options)
    if max_iter is not None:
        kwargs["max_iter"] = max_iter
    accepted = inspect.signature(METHODS[method]).parameters
    refused = [name for name in kwargs if name not in accepted]
    if refused:
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        raise BadInputError(f"{', '.join(map(flag, refused))} does not apply to {method} "
                            f"(it takes {', '.join(flag(n) for n in accepted if n != 'jacobian')})")
    return METHODS[method](**kwargs)


def resolve_top_k(config: AttackConfig, spec: TargetSpec | None, model: LoadedModel) -> int:
    """Ranking: K from --top-k, else from top:K, else from the model's metadata, else 1."""
    from_target = spec.k if spec is not None and spec.strategy == "top" else None
    if config.top_k is not None and from_target is not None and config.top_k != from_target:
        raise BadInputError(f"--top-k {config.top_k} contradicts --target top:{from_target}")
    chosen = config.top_k or from_target or int(model.info.metadata.get("top_k", 1))
    if not 1 <= chosen < model.num_labels:
        raise BadInputError(f"--top-k must lie in 1..{model.num_labels - 1}")
    return chosen


def _validate_box(box: tuple[float, float]) -> None:
    if not box[0] < box[1]:
        raise BadInputError(f"--range {box[0]} {box[1]}: LO must be below HI")


@dataclass
class RunPlan:
    model: LoadedModel
    attack: Attack
    source: InputSource
    spec: TargetSpec | None
    target_rows: np.ndarray | None
    top_k: int
    count: int


def plan(model_path: str | os.PathLike, inputs_path: str | os.PathLike, config: AttackConfig) -> RunPlan:
    _validate_box(config.box)
    if config.batch_size < 1:
        raise BadInputError("--batch-size must be at least 1")
    attack = build_attack(config.method, config.max_iter, config.attack_options)
    source = open_inputs(inputs_path, config.key, config.image_layout, config.image_scale)
    count = source.count if config.limit is None else min(source.count, config.limit)
    if count < 1:
        raise BadInputError("--limit leaves no input to attack")
    probe = next(source.batches(0, min(count, 4), 4))[1]
    model = load(model_path, device=config.device, output=config.output, scores=config.scores,
                 threshold=config.threshold, labels_file=config.labels_file, tolerance=config.tolerance,
                 box=config.box, probe=np.asarray(probe, dtype=np.float64), seed=config.seed)
    spec, target_rows = None, None
    if config.target_file is not None:
        try:
            loaded = np.load(config.target_file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot read --target-file {config.target_file}: {exc}") from None
        target_rows = check_target_file(loaded, count, model.num_labels)
    else:
        spec = parse_target(config.target, model.labels)
        if spec.strategy == "top" and attack.task is not Task.RANKING:
            raise BadInputError("top:K targets are for ranking methods (rank1, rank2)")
    top_k = resolve_top_k(config, spec, model) if attack.task is Task.RANKING else 0
    return RunPlan(model, attack, source, spec, target_rows, top_k, count)


def run_attack(model_path: str | os.PathLike, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
               config: AttackConfig, progress: Progress | None = None) -> Path:
    """Attack every input and write the result file; returns its path. Resumable."""
    out_path = Path(out_path)
    if out_path.exists() and not (config.resume or config.overwrite):  # before any slow work
        raise BadInputError(f"{out_path} exists; pass --resume to continue it or --overwrite to replace it")
    run = plan(model_path, inputs_path, config)
    model, attack = run.model, run.attack
    criterion = criterion_for(attack.task, model.reader, run.top_k)
    torch.manual_seed(config.seed)
    target_text = run.spec.describe() if run.spec else f"file:{Path(config.target_file).name}"
    params = {**attack.params(), "box": list(config.box), "batch_size": config.batch_size,
              "top_k": run.top_k or None, "tolerance": config.tolerance}
    identity = {
        "model_sha256": model.info.sha256, "model_name": model.name, "method": attack.name,
        "target": target_text, "params": json.dumps(params, sort_keys=True), "seed": config.seed,
        "scores_kind": model.reader.kind.value, "threshold": model.reader.threshold,
        "n_inputs": run.count,
    }
    attrs = {**identity, "labels": json.dumps(model.labels), "versions": json.dumps(versions()),
             "task": attack.task.value, "inputs": str(inputs_path), "notes": json.dumps(model.notes),
             "output": model.score_output.name, "device": str(model.device)}
    if config.resume and out_path.exists():
        writer = ResultWriter.resume(out_path, identity)
    else:
        writer = ResultWriter.create(out_path, run.source.sample_shape, model.input.dtype,
                                     model.num_labels, attrs, overwrite=config.overwrite)
    victim = Victim(model.attack_logits, model.reader, config.box, top_k=max(run.top_k, 1))
    started = time.monotonic()
    elapsed_before = float(writer.handle.attrs.get("elapsed_s", 0.0))
    try:
        start = writer.rows_written
        successes = int(np.sum(writer.handle["success"][:start])) if start else 0
        attacked_total = int(np.sum(writer.handle["attacked"][:start])) if start else 0
        if progress:
            progress(start, run.count, successes, attacked_total)
        for first, x in run.source.batches(start, run.count, config.batch_size):
            rows = attack_batch(run, criterion, victim, x, first, config.seed)
            writer.append(rows)
            writer.set_attrs(elapsed_s=elapsed_before + time.monotonic() - started)
            maybe_crash("after-batch", writer.rows_written // config.batch_size)
            successes += int(rows["success"].sum())
            attacked_total += int(rows["attacked"].sum())
            if progress:
                progress(first + len(x), run.count, successes, attacked_total)
        writer.set_attrs(complete=writer.rows_written >= run.count,
                         elapsed_s=elapsed_before + time.monotonic() - started)
    finally:
        writer.close()
    return out_path


def attack_batch(run: RunPlan, criterion, victim: Victim, x: np.ndarray, first: int, seed: int) -> dict:
    model = run.model
    x = to_input_dtype(np.asarray(x), model.input.dtype)
    clean = model.ort_scores(x)
    predicted = criterion.predict(clean)
    if run.target_rows is not None:
        target = run.target_rows[first:first + len(x)]
    else:
        target = make_targets(run.spec, predicted, clean, seed, first_index=first)
    attacked = ~criterion.reached(clean, target)
    x_adv = x.copy()
    iterations = np.zeros(len(x), dtype=np.int32)
    if attacked.any():
        index = np.flatnonzero(attacked)
        x_in = model.as_tensor(x[index])
        result = run.attack.run(victim, x_in, torch.as_tensor(target[index], device=model.device))
        x_adv[index] = to_input_dtype(result.x_adv.detach().cpu().numpy(), model.input.dtype)
        iterations[index] = result.iterations.cpu().numpy()
    verdict = ort_verdict(model, criterion, x_adv, target)
    torch_verdict = torch_reached(model, criterion, x_adv, target)
    delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return {
        "x": x, "x_adv": x_adv, "scores": clean.astype(np.float32),
        "scores_adv": verdict.scores.astype(np.float32), "y_pred": predicted, "y_target": target,
        "y_adv": verdict.predicted, "success": verdict.reached & attacked, "attacked": attacked,
        "torch_agrees": torch_verdict == verdict.reached,
        "l2": np.linalg.norm(delta, axis=1).astype(np.float32),
        "linf": np.abs(delta).max(axis=1).astype(np.float32), "iterations": iterations,
    }


def versions() -> dict[str, str]:
    import onnx
    import onnx2torch
    import onnxruntime

    return {"onnxattack": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "onnx2torch": getattr(onnx2torch, "__version__", "1.5.15")}



def run_transfer(results_path: str | os.PathLike, model_paths: list[str], device: str = "auto",
                 chunk: int = 256) -> dict[str, dict]:
    """Re-score the stored adversarial inputs on other models (same label space), chunk by chunk;
    store transfer/<model> groups and return per-model success and flip rates."""
    from .store import begin_transfer, json_attr, open_results, read_attrs
    from .validate import transfer

    with open_results(results_path) as handle:
        attrs = read_attrs(handle)
        rows = int(attrs.get("rows_written", handle["x_adv"].shape[0]))
        params = json_attr(handle, "params", {})
        probe = np.asarray(handle["x"][:min(rows, 4)], dtype=np.float64)
        labels = json_attr(handle, "labels", [])
    task = Task(attrs.get("task", Task.CLASSIFICATION.value))
    rates: dict[str, dict] = {}
    for model_path in model_paths:
        other = load(model_path, device=device, convert=False, box=tuple(params.get("box", (0.0, 1.0))),
                     probe=probe)
        if other.num_labels != len(labels):
            raise BadInputError(f"{model_path} has {other.num_labels} labels, the results have {len(labels)}")
        criterion = criterion_for(task, other.reader, int(params.get("top_k") or 1))
        successes = flips = attacked_count = 0
        with open_results(results_path, "r+") as handle:
            group = begin_transfer(handle, other.name, rows, len(labels))
            for start in range(0, rows, chunk):
                stop = min(rows, start + chunk)
                result = transfer(other, criterion, handle["x"][start:stop], handle["x_adv"][start:stop],
                                  handle["y_target"][start:stop])
                attacked = np.asarray(handle["attacked"][start:stop], dtype=bool)
                group["scores_adv"][start:stop] = result.scores_adv
                group["y_adv"][start:stop] = result.y_adv
                group["success"][start:stop] = result.success & attacked
                successes += int((result.success & attacked).sum())
                flips += int((result.flipped & attacked).sum())
                attacked_count += int(attacked.sum())
            model_rates = {"model_sha256": other.info.sha256, "attacked": attacked_count,
                           "success_rate": successes / attacked_count if attacked_count else 0.0,
                           "flip_rate": flips / attacked_count if attacked_count else 0.0,
                           "scores_kind": other.reader.kind.value}
            group.attrs.update(model_rates)
        rates[other.name] = model_rates
    return rates
