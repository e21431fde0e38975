"""Crosscheck: one model, every deployment of it, in one matrix (`onnxattack crosscheck`).

The members are the reference, its variants (variants.py: int8, int8-dynamic, fp16, ort-basic, ort-all
files, and `openvino`: the reference's file under a second runtime, runtimes.py) and other models the
user names; each takes the reference's rows through its input mapping (adapt.py)
and is matched to the reference's labels (labelmatch.py). Two matrices come out:
- agreement (clean): for every pair, the share of inputs whose predicted label sets are equal on the
  labels both share, and the largest score difference on them (raw scores: compare members that
  read the same kind of scores);
- transfer: the adversarial inputs of an ordinary `run_attack` run on member i (a part file each),
  judged in onnxruntime on member j (`run_transfer`: success on the shared labels); the diagonal is each
  member's own success. A member that cannot be attacked keeps an empty (NaN) row, with the reason; a
  runtime member (`openvino`) runs the reference's file, whose adversarial inputs are the reference's
  row: it is judged only (its column), and every verdict it gives is its runtime's.
Each model file is read once (model.open_model), and that ModelFile serves its variants, its clean
scores, its own run and its verdicts on every other run.
A third, asked for with `--disagree A:B` (disagreement.py): the smallest perturbation after which members
A and B predict different label sets, searched through both torch graphs together.
Part files live in OUT.parts/ until OUT is whole; a complete part (same model, method, target, seed) is
reused by --resume (its settings are noted beside it as <name>.identity.json), so an interrupted check
redoes at most one member's run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .adapt import Adapter, ModelArg
from .attacks import METHODS, Disagree, PairAttack
from .config import AttackConfig
from .disagreement import PairOutcome, member_decisions, parse_pairs, run_pair, shared_labels
from .errors import BadInputError, UnsupportedModelError, first_line
from .inputs import check_rows, open_inputs
from .labelmatch import LabelMatch
from .loader import LoadedModel, LoadSettings, load, resolve_box
from .model import ModelFile, choose_attack_input, open_model, read_labels
from .pipeline import run_attack
from .results import CheckWriter, ResultFile, check_output_path
from .runtimes import DEFAULT_RUNTIME, get_runtime
from .transfer import ReadAs, input_adapter, label_matching, run_transfer
from .types import Task
from .variants import RUNTIME_VARIANTS, check_variants, make_variant

__all__ = ["Member", "format_crosscheck", "run_crosscheck"]


@dataclass(frozen=True)
class Member:
    """One model of the check: its name (group), file, role, input mapping and label matching."""

    name: str
    arg: ModelArg  # path, and its input's layout, range and runtime as resolved
    role: str  # reference | variant | runtime | model
    adapter: Adapter  # the reference's rows -> this model's input
    match: LabelMatch  # this model's labels -> the reference's
    sha256: str
    runtime: str = ""  # the runtime that scores it, as named in the file: name, version, device, precision


def _unique(name: str, taken: set[str]) -> str:
    candidate, count = name, 2
    while candidate in taken or candidate in ("agreement", "transfer"):
        candidate, count = f"{name}-{count}", count + 1
    taken.add(candidate)
    return candidate


def _prepare_parts(out: Path, config: AttackConfig) -> Path:
    """OUT.parts/: refused when left by an interrupted check unless --resume (continue) or --overwrite."""
    parts = out.with_name(out.name + ".parts")
    if parts.exists() and not config.resume:
        if not config.overwrite:
            raise BadInputError(f"{parts} holds the runs of an interrupted crosscheck; pass --resume to continue it "
                                f"or --overwrite to start over")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    return parts


def _variant_file(name: str, reference: ModelFile, folder: Path, x: np.ndarray, config: AttackConfig,
                  kept: bool) -> tuple[Path, bool]:
    """The variant's file, and whether it was made now."""
    path = folder / f"{Path(reference.info.path).stem}.{name}.onnx"
    if path.exists() and config.resume:
        return path, False
    if path.exists() and kept and not config.overwrite:
        raise BadInputError(f"{path} exists; pass --overwrite to replace it or --resume to use it")
    attacked = choose_attack_input(reference.info, config.attack_input)
    return make_variant(name, reference, path, x.astype(attacked.dtype), attacked.name), True


def _member(name: str, arg: ModelArg, role: str, reference: ModelArg, x: np.ndarray, box: tuple[float, float],
            labels: list[str], read_as: ReadAs, task: Task, files: dict[str, ModelFile]
            ) -> tuple[Member, LoadedModel]:
    model_file = files.get(arg.path) or files.setdefault(arg.path, open_model(arg.path))
    if len(model_file.info.inputs) != 1:
        raise BadInputError(f"{arg.path}: crosscheck takes models with one input (this one has "
                            f"{len(model_file.info.inputs)})")
    adapter = input_adapter(model_file, arg, None, tuple(x.shape[1:]), x.dtype, box, reference,
                            same_model=role != "model")
    loaded = load(model_file, LoadSettings(convert=False, box=adapter.target, scores=read_as.scores,
                                           threshold=read_as.threshold, runtime=arg.runtime), probe=adapter(x[:4]))
    match = label_matching(labels, loaded.labels, read_labels(model_file.info) is not None or role != "model",
                           read_as, task, str(arg.path))
    layout = arg.layout or (adapter.layouts[1] if adapter.axes is not None else reference.layout)
    resolved = ModelArg(arg.path, layout, adapter.target, arg.runtime)
    runtime = f"{get_runtime(arg.runtime).describe()} ({', '.join(loaded.scorer.providers)})"
    return Member(name, resolved, role, adapter, match, model_file.info.sha256, runtime), loaded


def _identity(member: Member, config: AttackConfig, rows: int) -> str:
    """What a finished part must have been run with to be reused: the model, the rows and every setting."""
    settings = {key: value for key, value in asdict(config).items() if key not in ("resume", "overwrite")}
    return json.dumps({"sha256": member.sha256, "rows": rows, **settings}, sort_keys=True, default=str)


def _reusable(part: Path, identity: str) -> bool:
    """A complete part whose identity note (written beside it once it was complete) matches."""
    note = part.with_suffix(".identity.json")
    if not (part.exists() and note.exists()) or note.read_text(encoding="utf-8") != identity:
        return False
    with ResultFile.open(part) as run:
        return bool(run.attrs.get("complete"))


def _attack(member: Member, x: np.ndarray, parts: Path, config: AttackConfig, files: dict[str, ModelFile],
            on_member: Callable[[str], None] | None) -> tuple[Path | None, str]:
    """The member's own run (a part file), or None and why it could not be attacked."""
    if member.role == "runtime":
        return None, (f"the reference's own file under {member.arg.runtime}: its adversarial inputs are the "
                      f"reference's (its row); judged only")
    part = parts / f"{member.name}.h5"
    own = replace(config, box=member.arg.range, key=None, limit=None, shard=None, target_file=None,
                  resume=part.exists() and config.resume, overwrite=not config.resume,
                  labels_file=config.labels_file if member.role != "model" else None)
    identity = _identity(member, own, len(x))
    if _reusable(part, identity):
        return part, ""
    inputs = parts / f"{member.name}.inputs.npy"
    np.save(inputs, member.adapter(x))
    if on_member:
        on_member(member.name)
    try:
        run_attack(files[member.arg.path], inputs, part, own)
    except UnsupportedModelError as exc:
        part.unlink(missing_ok=True)
        return None, first_line(exc)
    part.with_suffix(".identity.json").write_text(identity, encoding="utf-8")
    return part, ""


def _pair_map(source: Member, judge: Member) -> dict[str, str]:
    """Label names of `source` -> those of `judge`, through the reference's labels both match."""
    source_names = dict(source.match.pairs)
    judge_names = dict(judge.match.pairs)
    return {source_names[name]: judge_names[name] for name in source_names if name in judge_names}


def _agreement(clean: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    size = len(clean)
    equal, diff = np.full((size, size), np.nan), np.full((size, size), np.nan)
    for i, (scores_i, pred_i) in enumerate(clean):
        for j, (scores_j, pred_j) in enumerate(clean):
            shared = (pred_i[0] >= 0) & (pred_j[0] >= 0)
            if not shared.any():
                continue
            equal[i, j] = float(np.all(pred_i[:, shared] == pred_j[:, shared], axis=1).mean())
            diff[i, j] = float(np.abs(scores_i[:, shared].astype(np.float64) - scores_j[:, shared]).max())
    return equal, diff


def _members(reference: ModelArg, ref_file: ModelFile, x: np.ndarray, box: tuple[float, float],
             config: AttackConfig, parts: Path, keep_variants: str | Path | None, variants: list[str],
             models: list[ModelArg], read_as: ReadAs, task: Task, top_k: int, files: dict[str, ModelFile]
             ) -> tuple[list[Member], list[tuple[np.ndarray, np.ndarray]]]:
    """Every member (variants made), with its clean scores and predictions in the reference's labels."""
    folder = Path(keep_variants) if keep_variants else parts
    reference = ModelArg(reference.path, reference.layout, box)
    files[reference.path] = ref_file
    labels = load(ref_file, LoadSettings(convert=False, box=box, labels_file=config.labels_file,
                                         scores=read_as.scores, threshold=read_as.threshold),
                  probe=x[:4]).labels
    taken: set[str] = set()
    built = [_member(_unique(Path(ref_file.info.path).stem, taken), reference, "reference", reference, x, box, labels,
                     read_as, task, files)]
    for name in variants:
        if name in RUNTIME_VARIANTS:
            arg, made = ModelArg(reference.path, reference.layout, box, name), False
        else:
            path, made = _variant_file(name, ref_file, folder, x, config, keep_variants is not None)
            arg = ModelArg(str(path), reference.layout, box)
        try:  # loading it is its check: onnxruntime (or its runtime) runs it on the first rows
            built.append(_member(_unique(name, taken), arg, "runtime" if name in RUNTIME_VARIANTS else "variant",
                                 reference, x, box, labels, read_as, task, files))
        except UnsupportedModelError as exc:
            if made:  # a file made now that does not run is not kept
                Path(arg.path).unlink(missing_ok=True)
            raise UnsupportedModelError(f"variant {name} of {Path(ref_file.info.path).name} does not run in "
                                        f"{arg.runtime}: {first_line(exc)}") from None
    built += [_member(_unique(Path(arg.path).stem, taken), arg, "model", reference, x, box, labels, read_as, task,
                      files) for arg in models]
    members = [member for member, _ in built]
    return members, [member_decisions(member, loaded, x, task, top_k) for member, loaded in built]


def run_crosscheck(reference: ModelArg, inputs: str | Path, out: str | Path, config: AttackConfig,
                   models: list[ModelArg] | None = None, variants: list[str] | None = None,
                   keep_variants: str | Path | None = None, read_as: ReadAs | None = None,
                   on_member: Callable[[str], None] | None = None, pairs: list[str] | None = None,
                   pair_method: PairAttack | None = None) -> dict:
    """Build every member, attack each, judge every run on every member, search every pair of `pairs`
    (`A:B` member names) for its smallest disagreement with `pair_method` (default: disagree), write OUT;
    return the summary."""
    out = Path(out)
    check_output_path(out, resume=config.resume, overwrite=config.overwrite)
    if config.target_file is not None or config.shard is not None:
        raise BadInputError("crosscheck takes a --target strategy over the whole input set (no --target-file, "
                            "no --shard)")
    read_as = read_as or ReadAs(config.scores, config.threshold, config.top_k)
    task = METHODS[config.method].task
    top_k = config.top_k or 1
    check_variants(variants or [])
    for arg in [reference, *(models or [])]:
        get_runtime(arg.runtime).check()
    if reference.runtime != DEFAULT_RUNTIME:
        raise BadInputError("the reference is attacked and judged in onnxruntime: name another runtime with "
                            "--variants openvino or --model FILE:runtime=NAME")
    ref_file = open_model(reference.path)
    box, _ = resolve_box(config.box or reference.range, ref_file.info)
    source = open_inputs(inputs, config.key, config.image_layout, config.image_scale)
    count = source.count if config.limit is None else min(source.count, config.limit)
    if count == 0:
        raise BadInputError(f"{Path(inputs).name} holds no inputs")
    x = np.asarray(next(source.batches(0, count, count))[1])
    check_rows(x, box, Path(inputs).name)
    fresh = not (out.with_name(out.name + ".parts")).exists()
    parts = _prepare_parts(out, config)
    files: dict[str, ModelFile] = {}  # each model file read once, by the path as given
    try:  # the members are built before any run: a refusal here leaves no parts folder behind
        members, clean = _members(reference, ref_file, x, box, config, parts, keep_variants, variants or [],
                                  models or [], read_as, task, top_k, files)
        searched = _pairs(pairs or [], members, task)
        method = pair_method or Disagree()
    except BaseException:
        if fresh:
            shutil.rmtree(parts, ignore_errors=True)
        raise
    runs = [_attack(member, x, parts, config, files, on_member) for member in members]
    success = np.stack([_transfer_row(i, members, part, read_as, config.device, files)
                        for i, (part, _) in enumerate(runs)])
    gradients = [_gradients(part) for part, _ in runs]
    equal, diff = _agreement(clean)
    outcomes = [run_pair(members[i], members[j], x, box, method, config, read_as, parts, on_member)
                for i, j in searched]
    for (i, _), outcome in zip(searched, outcomes, strict=True):
        outcome.attrs["method_l2_a"] = _mean_l2(runs[i][0])
    _write(out, x, config, members, clean, runs, gradients, (equal, diff, success), keep_variants is not None,
           outcomes)
    shutil.rmtree(parts)
    return {"path": str(out), "models": [member.name for member in members],
            "roles": [member.role for member in members], "inputs": len(x), "agreement": _listed(equal),
            "max_score_diff": _listed(diff), "transfer": _listed(success),
            "mappings": {member.name: member.adapter.describe() for member in members},
            "runtimes": {member.name: member.runtime for member in members},
            "gradients": {member.name: route for member, route in zip(members, gradients, strict=True) if route},
            "labels": {member.name: member.match.describe() for member in members},
            "not_attacked": {member.name: reason for member, (part, reason) in zip(members, runs, strict=True)
                             if part is None},
            "method": config.method,
            "disagree": {outcome.name: {**outcome.summary(), "method_l2_a": _rounded(outcome.attrs["method_l2_a"])}
                         for outcome in outcomes}}


def _pairs(specs: list[str], members: list[Member], task: Task) -> list[tuple[int, int]]:
    """The pairs to search, checked before any run: known members that share labels, a threshold task."""
    pairs = parse_pairs(specs, [member.name for member in members])
    if pairs and task is not Task.CLASSIFICATION:
        raise BadInputError(f"--disagree compares thresholded label sets; the check's --method attacks "
                            f"{task.value} targets (use a classification method, e.g. ml-cw)")
    for i, j in pairs:
        shared_labels(members[i], members[j])
    return pairs


def _mean_l2(part: Path | None) -> float:
    """The mean L2 of a member's own run over its onnxruntime successes (NaN: not attacked, no success)."""
    if part is None:
        return float("nan")
    with ResultFile.open(part) as run:
        success = run.success.astype(bool)
        return float(run.column("l2")[success].mean()) if success.any() else float("nan")


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def _gradients(part: Path | None) -> str:
    """How the member's own run got its gradients: `torch`, or `estimated from onnxruntime queries (why)`;
    "" when it was not attacked."""
    if part is None:
        return ""
    with ResultFile.open(part) as run:
        kind, notes = str(run.attrs.get("gradients", "")), json.loads(run.attrs.get("notes", "[]"))
    why = [note for note in notes if note.startswith("gradients are estimated")]
    return f"estimated{why[0].removeprefix('gradients are estimated')}" if kind == "estimated" and why else kind


def _transfer_row(i: int, members: list[Member], part: Path | None, read_as: ReadAs, device: str,
                  files: dict[str, ModelFile]) -> np.ndarray:
    """Row i of the transfer matrix: member i's own success, and its adversarial rows judged on every other
    member (NaN throughout when it was not attacked or no row was)."""
    row = np.full(len(members), np.nan)
    if part is None:
        return row
    with ResultFile.open(part) as run:
        attacked = run.attacked
        if not attacked.any():
            return row
        row[i] = float(run.success.sum() / attacked.sum())
    source = members[i]
    for j, judge in enumerate(members):
        if j != i:
            pair = replace(read_as, label_map=_pair_map(source, judge), by_position=False, reference=source.arg)
            row[j] = run_transfer(part, [judge.arg], device=device, read_as=pair, names=[judge.name],
                                  files=files)[judge.name]["success_rate"]
    return row


def _write(out: Path, x: np.ndarray, config: AttackConfig, members: list[Member],
           clean: list[tuple[np.ndarray, np.ndarray]], runs: list[tuple[Path | None, str]], gradients: list[str],
           matrices: tuple[np.ndarray, np.ndarray, np.ndarray], kept: bool, outcomes: list[PairOutcome]) -> None:
    """OUT, through results/check.py: the clean inputs, every member with its run, the matrices."""
    names = [member.name for member in members]
    labels = [name for name, _ in members[0].match.pairs]  # the reference matched to itself: all its labels
    writer = CheckWriter(out, x, {"models": json.dumps(names), "reference": names[0], "labels": json.dumps(labels),
                                  "method": config.method, "target": config.target, "seed": config.seed,
                                  "n_inputs": len(x)})
    try:
        for member, (scores, y_pred), (part, reason), route in zip(members, clean, runs, gradients, strict=True):
            writer.add_model(member.name, {"path": str(Path(member.arg.path).resolve()), "sha256": member.sha256,
                                           "role": member.role, "input_mapping": member.adapter.to_json(),
                                           "label_match": member.match.to_json(), "attacked": part is not None,
                                           "reason": reason, "kept": kept or member.role != "variant",
                                           "runtime": member.arg.runtime, "runtime_detail": member.runtime,
                                           "gradients": route},
                             scores, y_pred, part)
        writer.write_matrices(*matrices)
        for outcome in outcomes:
            writer.add_pair(outcome.name, outcome.attrs, outcome.rows)
        writer.finish()
    except BaseException:
        writer.abandon()
        raise


def _listed(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(value) else round(float(value), 6) for value in row] for row in matrix]


def _table(title: str, names: list[str], matrix: list[list[float | None]], percent: bool) -> list[str]:
    width = max(8, *(len(name) for name in names))
    lines = [title, " " * width + " " + " ".join(f"{name:>{width}}" for name in names)]
    for name, row in zip(names, matrix, strict=True):
        cells = ["-" if v is None else (f"{v:.1%}" if percent else f"{v:.3g}") for v in row]
        lines.append(f"{name:<{width}} " + " ".join(f"{cell:>{width}}" for cell in cells))
    return lines


def format_crosscheck(summary: dict) -> str:
    """The summary as terminal tables: agreement, largest score difference, transfer."""
    names = summary["models"]
    lines = [f"crosscheck of {len(names)} models on {summary['inputs']} inputs -> {summary['path']}"]
    runtimes, routes = summary.get("runtimes", {}), summary.get("gradients", {})
    for name in names:
        lines.append(f"  {name}: input {summary['mappings'][name]}; labels: {summary['labels'][name]}")
        route = routes.get(name, "")  # a summary read back from a file (report) may lack runtimes and routes
        how = [f"scored by {runtimes[name]}"] if name in runtimes else []
        how += ([f"not attacked ({summary['not_attacked'][name]})"] if name in summary["not_attacked"]
                else ["attacked through its torch graph"] if route == "torch"
                else [f"attacked with gradients {route}"] if route else [])
        if how:
            lines.append("      " + "; ".join(how))
    lines += _table("clean agreement (equal predicted label sets on shared labels)", names, summary["agreement"], True)
    lines += _table("largest clean score difference", names, summary["max_score_diff"], False)
    lines += _table("transfer success (row: crafted on, column: judged on; diagonal: own success)", names,
                    summary["transfer"], True)
    if summary.get("disagree"):
        lines += _disagreement_table(summary["disagree"], summary.get("method", "method"))
    return "\n".join(lines)


def _disagreement_table(pairs: dict[str, dict], method: str) -> list[str]:
    """One line per pair: how often and how close its two models were made to disagree, beside the L2 the
    check's own method needed on A."""
    width = max(12, *(len(name) for name in pairs))
    own = f"{method} L2 on A"
    lines = ["disagreement search (smallest change after which A and B predict different label sets; onnxruntime)",
             f"{'A:B':<{width}} {'success':>8} {'mean L2':>9} {'median L2':>9} {'mean Linf':>9} {own:>{len(own)}}"]
    for name, pair in pairs.items():
        if pair.get("reason"):
            lines.append(f"{name:<{width}} not searched ({pair['reason']})")
            continue
        cells = [_cell(pair["mean_l2"]), _cell(pair["median_l2"]), _cell(pair["mean_linf"])]
        lines.append(f"{name:<{width}} {pair['success_rate']:>8.1%} " + " ".join(f"{cell:>9}" for cell in cells)
                     + f" {_cell(pair['method_l2_a']):>{len(own)}}")
    return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
