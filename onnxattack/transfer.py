"""Transfer: the stored adversarial inputs re-scored on other models (`onnxattack validate`).

For every other model, each stored row's x and x_adv are scored by onnxruntime and judged with the
run's own criterion (same task; the other model's score reading, threshold and K can be set). Two
rates per model, over the attacked rows:
- success: the other model's prediction on x_adv reaches the row's target;
- flip: the other model's prediction on x_adv differs from its own prediction on x (the attack
  changed its answer at all, whether or not to the target).
Each model's verdict is stored in the result file as transfer/<key> (key: the model file's stem, with
a short hash of its path when two models share a stem), with the model's path and hash.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .loader import LoadSettings, load
from .model import ModelFile, open_model
from .results import ResultFile, TransferWriter
from .scores import criterion_for
from .types import Task
from .validate import transfer

__all__ = ["ReadAs", "run_transfer", "transfer_keys"]


@dataclass(frozen=True)
class ReadAs:
    """How to read the other models' scores (None: as each model's own output says, and the run's K)."""

    scores: str = "auto"
    threshold: float | None = None
    top_k: int | None = None


def transfer_keys(paths: list[str], existing: dict[str, dict]) -> list[str]:
    """A group name per model: its stem, or stem-<8 hex of its resolved path> where the stem alone would
    collide (with another model of this call, or a group written for a model at another path)."""
    stems = [Path(path).stem for path in paths]
    keys = []
    for path, stem in zip(paths, stems, strict=True):
        resolved = str(Path(path).resolve())
        stored = existing.get(stem, {}).get("model_path")
        if stems.count(stem) > 1 or (stored is not None and stored != resolved):
            stem = f"{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
        keys.append(stem)
    return keys


def run_transfer(results_path: str | os.PathLike, model_paths: list[str], device: str = "auto", chunk: int = 256,
                 read_as: ReadAs | None = None) -> dict[str, dict]:
    """Re-score the stored adversarial inputs on other models (same label space), chunk by chunk; store
    transfer/<key> groups and return per-model success and flip rates."""
    read_as = read_as or ReadAs()
    with ResultFile.open(results_path) as results:
        attrs, rows, params = results.attrs, results.rows, results.params
        stored = results.column("x", 0, 4)
        tokens = stored.dtype.kind in "iu" and stored.dtype.itemsize >= 4  # token ids (ml-hotflip), not pixels
        probe = stored.astype(np.float64)
        labels = results.json_attr("labels", [])
        stored_others = results.passthrough_names()
        probe_others = {name: results.passthrough(name, 0, 4) for name in stored_others}
        keys = transfer_keys(model_paths, results.transfers())
    task = Task(attrs.get("task", Task.CLASSIFICATION.value))
    rates: dict[str, dict] = {}
    for model_path, key in zip(model_paths, keys, strict=True):
        model_file = open_model(model_path)
        rates[key] = _transfer_one(results_path, model_file, key, task, read_as, device, chunk, rows, params,
                                   labels, stored_others, probe, probe_others, attrs.get("attack_input"), tokens)
    return rates


def _transfer_one(results_path: str | os.PathLike, model_file: ModelFile, key: str, task: Task, read_as: ReadAs,
                  device: str, chunk: int, rows: int, params: dict, labels: list, stored_others: list[str],
                  probe: np.ndarray, probe_others: dict[str, np.ndarray], attacked: str | None,
                  tokens: bool = False) -> dict:
    # the other model takes the stored pass-through inputs it has (by name), perhaps none of them
    takes = {value.name for value in model_file.info.inputs}
    fed = [name for name in stored_others if name in takes]
    settings = LoadSettings(device=device, convert=False, box=tuple(params.get("box", (0.0, 1.0))),
                            attack_input=attacked if attacked in takes else None, scores=read_as.scores,
                            threshold=read_as.threshold, tokens=tokens)
    other = load(model_file, settings, probe=probe, probe_others={name: probe_others[name] for name in fed},
                 probe_name=f"{Path(results_path).name}:x")
    if other.num_labels != len(labels):
        raise BadInputError(f"{model_file.info.path} has {other.num_labels} labels, the results have {len(labels)}")
    criterion = criterion_for(task, other.reader, read_as.top_k or int(params.get("top_k") or 1))
    successes = flips = attacked_count = 0
    with TransferWriter(results_path, key) as writer:
        results = writer.results
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            others = {name: results.passthrough(name, start, stop) for name in fed}
            with other.bound(others):
                result = transfer(other, criterion, results.column("x", start, stop),
                                  results.column("x_adv", start, stop), results.column("y_target", start, stop))
            attacked_rows = results.column("attacked", start, stop).astype(bool)
            writer.write(start, scores_adv=result.scores_adv, y_adv=result.y_adv,
                         success=result.success & attacked_rows)
            successes += int((result.success & attacked_rows).sum())
            flips += int((result.flipped & attacked_rows).sum())
            attacked_count += int(attacked_rows.sum())
        model_rates = {"model_sha256": other.info.sha256, "model_path": str(Path(model_file.info.path).resolve()),
                       "attacked": attacked_count,
                       "success_rate": successes / attacked_count if attacked_count else 0.0,
                       "flip_rate": flips / attacked_count if attacked_count else 0.0,
                       "scores_kind": other.reader.kind.value}
        writer.finish(**model_rates)
    return model_rates
