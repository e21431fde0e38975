"""Transfer: the stored adversarial inputs re-scored on other models (`onnxattack validate`).

For every other model, each stored row's x and x_adv are scored by onnxruntime and judged with the
run's own criterion (same task; the other model's score reading, threshold and K can be set). Two
rates per model, over the attacked rows:
- success: the other model's prediction on x_adv reaches the row's target;
- flip: the other model's prediction on x_adv differs from its own prediction on x (the attack
  changed its answer at all, whether or not to the target).
Each model's verdict is stored in the result file as transfer/<key> (key: the model file's stem, with
a short hash of its path when two models share a stem, and `-<runtime>` when another runtime than
onnxruntime scores it: `FILE:runtime=openvino`), with the model's path and hash and the runtime that
gave the verdict (`runtime`, `runtime_detail`: name, version, device and precision).

Another deployment of the model may take its input in another layout, range or dtype (`adapt.py`: the
stored rows are mapped into its input space) and name its labels differently (`labelmatch.py`: labels
matched by name or a label map; success is judged on the shared labels). The mapping and the matching
used are stored as the group's attributes `input_mapping` and `label_match` (JSON).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapt import Adapter, ModelArg, Side, fits, parse_model_arg, plan_adapter
from .errors import BadInputError
from .feeds import replayed
from .labelmatch import LabelMatch, match_labels
from .loader import LoadSettings, load
from .model import ModelFile, choose_attack_input, declared_range, open_model, read_labels
from .results import ResultFile, TransferWriter
from .runtimes import DEFAULT_RUNTIME, get_runtime
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
    label_map: dict[str, str] | None = None  # reference label name -> the other model's (--label-map)
    by_position: bool = False  # --match-labels-by-position
    reference: ModelArg | None = None  # what the reference's input is, when the user states it


def transfer_keys(paths: list[str], existing: dict[str, dict], runtimes: list[str] | None = None) -> list[str]:
    """A group name per model: its stem (with -<runtime> when another runtime than onnxruntime scores it),
    or stem-<8 hex of its resolved path> where the stem alone would collide (with another model of this
    call, or a group written for a model at another path)."""
    stems = [Path(path).stem if runtime == DEFAULT_RUNTIME else f"{Path(path).stem}-{runtime}"
             for path, runtime in zip(paths, runtimes or [DEFAULT_RUNTIME] * len(paths), strict=True)]
    keys = []
    for path, stem in zip(paths, stems, strict=True):
        resolved = str(Path(path).resolve())
        stored = existing.get(stem, {}).get("model_path")
        if stems.count(stem) > 1 or (stored is not None and stored != resolved):
            stem = f"{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
        keys.append(stem)
    return keys


def run_transfer(results_path: str | os.PathLike, model_paths: list[str] | list[ModelArg], device: str = "auto",
                 chunk: int = 256, read_as: ReadAs | None = None, names: list[str] | None = None,
                 files: Mapping[str, ModelFile] | None = None) -> dict[str, dict]:
    """Re-score the stored adversarial inputs on other models, chunk by chunk, each row mapped into the
    model's input space and judged on the labels it shares with the reference; store transfer/<key>
    groups and return per-model success and flip rates with the mapping and label matching used. `names`:
    the group names (default: from the file names, `transfer_keys`); `files`: models read already, by path
    as given (crosscheck's), so that a file is not read again for every run it judges."""
    read_as = read_as or ReadAs()
    args = [arg if isinstance(arg, ModelArg) else parse_model_arg(str(arg)) for arg in model_paths]
    model_paths = [arg.path for arg in args]
    with ResultFile.open(results_path) as results:
        attrs, rows, params = results.attrs, results.rows, results.params
        stored = results.column("x", 0, 4)
        tokens = stored.dtype.kind in "iu" and stored.dtype.itemsize >= 4  # token ids (ml-hotflip), not pixels
        probe = stored.astype(np.float64)
        labels = results.labels
        stored_others = results.passthrough_names()
        probe_others = {name: results.passthrough(name, 0, 4) for name in stored_others}
        given = results.given_inputs()
        keys = names or transfer_keys(model_paths, results.transfers(), [arg.runtime for arg in args])
        task = results.task
    rates: dict[str, dict] = {}
    for arg, key in zip(args, keys, strict=True):
        model_file = (files or {}).get(arg.path) or open_model(arg.path)
        rates[key] = _transfer_one(results_path, model_file, arg, key, task, read_as, device, chunk, rows, params,
                                   labels, stored_others, probe, probe_others, attrs.get("attack_input"),
                                   str(attrs.get("model_sha256", "")), tokens, given)
    return rates


def input_adapter(model_file: ModelFile, arg: ModelArg, attacked: str | None, sample_shape: tuple[int, ...],
                  dtype: np.dtype, box: tuple[float, float], reference: ModelArg | None = None,
                  same_model: bool = False, tokens: bool = False, sequence: bool = False) -> Adapter:
    """The mapping of the reference's rows (sample_shape, dtype, box) into this model's attacked input. Its
    range: the stated one, else its `input_range` metadata (not for the run's own model: its rows are in
    the run's --range already), else the reference's."""
    info = model_file.info
    takes = {value.name for value in info.inputs}
    chosen = choose_attack_input(info, attacked if attacked in takes else None, tokens=tokens)
    target_box = arg.range or (None if same_model else declared_range(info)) or box
    source_box = reference.range if reference is not None and reference.range else box
    source = Side(sample_shape, source_box, np.dtype(dtype), reference.layout if reference else None)
    declared = tuple(chosen.shape)
    if sequence and len(declared) > 1:  # a streaming model: its rows are whole sequences of chunks
        declared = (declared[0], "sequence", *declared[2:])
    # a model without a batch dim takes whole rows: its declared shape is the sample's, not [batch, ...]
    per_sample = fits(sample_shape, declared)
    target = Side(declared if per_sample else declared[1:], target_box, np.dtype(chosen.dtype), arg.layout)
    return plan_adapter(source, target, "the reference", Path(arg.path).name)


def label_matching(reference: list[str], other: list[str], named: bool, read_as: ReadAs, task: Task,
                   where: str) -> LabelMatch:
    """The other model's labels matched to the reference's; models without label names must have as many."""
    if not named and not read_as.label_map and len(other) != len(reference):
        raise BadInputError(f"{where} has {len(other)} labels, the results have {len(reference)} (name them: "
                            f"metadata labels, or --label-map)")
    match = match_labels(reference, other, read_as.label_map, read_as.by_position, where)
    if task is not Task.CLASSIFICATION and not match.complete:
        raise BadInputError(f"{where}: a ranking verdict needs every label matched ({match.describe()})")
    return match


def _transfer_one(results_path: str | os.PathLike, model_file: ModelFile, arg: ModelArg, key: str, task: Task,
                  read_as: ReadAs,
                  device: str, chunk: int, rows: int, params: dict, labels: list, stored_others: list[str],
                  probe: np.ndarray, probe_others: dict[str, np.ndarray], attacked: str | None,
                  reference_sha: str, tokens: bool = False, given: dict[str, np.ndarray] | None = None) -> dict:
    # the other model takes the stored pass-through inputs it has (by name), perhaps none of them
    takes = {value.name for value in model_file.info.inputs}
    fed = [name for name in stored_others if name in takes]
    box = tuple(params.get("box", (0.0, 1.0)))
    fed_as_run = replayed(model_file.info, params, given or {})  # --set values, input batch dims, streaming state
    adapter = input_adapter(model_file, arg, attacked, tuple(probe.shape[1:]), probe.dtype, (box[0], box[1]),
                            read_as.reference, model_file.info.sha256 == reference_sha, tokens,
                            sequence="states" in fed_as_run)
    settings = LoadSettings(device=device, convert=False, box=adapter.target,
                            attack_input=attacked if attacked in takes else None, scores=read_as.scores,
                            threshold=read_as.threshold, tokens=tokens, runtime=arg.runtime, **fed_as_run)
    other = load(model_file, settings, probe=adapter(probe), probe_name=f"{Path(results_path).name}:x",
                 probe_others={name: probe_others[name] for name in fed})
    match = label_matching(labels, other.labels, read_labels(model_file.info) is not None, read_as, task,
                           str(model_file.info.path))
    criterion = criterion_for(task, other.reader, read_as.top_k or int(params.get("top_k") or 1))
    successes = flips = attacked_count = 0
    with TransferWriter(results_path, key) as writer:
        results = writer.results
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            others = {name: results.passthrough(name, start, stop) for name in fed}
            with other.bound(others):
                result = transfer(other, criterion, adapter(results.column("x", start, stop)),
                                  adapter(results.column("x_adv", start, stop)),
                                  results.column("y_target", start, stop), match)
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
                       "scores_kind": other.reader.kind.value, "runtime": arg.runtime,
                       "runtime_detail": f"{get_runtime(arg.runtime).describe()} ({', '.join(other.scorer.providers)})",
                       "input_mapping": adapter.describe(),
                       "label_match": match.describe()}
        writer.finish(**{**model_rates, "input_mapping": adapter.to_json(), "label_match": match.to_json()})
    return model_rates
