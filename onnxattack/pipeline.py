"""Model file + inputs -> attack -> onnxruntime validation -> HDF5, batch by batch, resumable."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .attacks import Attack, SetAttack
from .batch import BatchResult, attack_arrays, batch_targets, check_exclusion_targets, judge, target_spec
from .config import LAYOUTS, AttackConfig
from .errors import BadInputError, OnnxAttackError, UnsupportedModelError
from .estimated import STALL_REASONS
from .feeds import given_once, input_batch_axes, parse_set, without
from .inputs import InputSource, check_passthrough_sources, open_inputs, open_passthrough, read_whole, scan_inputs
from .loader import LoadedModel, LoadSettings, load, resolve_box, scores_only
from .merge import shard_attrs
from .model import ModelFile, choose_attack_input, open_model
from .results import ResultFile, ResultWriter, check_output_path, replacement_path
from .runtime import to_input_dtype
from .scores import Criterion, TopKExclusionCriterion
from .targets import TargetSpec, check_target_file
from .tokens import vocabulary_box

__all__ = ["AttackConfig", "RunPlan", "plan", "run_attack", "run_local", "versions"]

# rows done (fractional inside a batch: progress reported by the attack), rows total, successes, attacked
Progress = Callable[[float, int, int, int], None]


@dataclass
class RunPlan:
    """Everything a run needs, checked before the result file is touched."""

    model: LoadedModel
    attack: Attack
    source: InputSource
    source_name: str
    spec: TargetSpec | None
    target_rows: np.ndarray | None
    criterion: Criterion
    count: int
    start: int = 0  # this run's rows [start, stop) of the input set: all of them unless --shard
    stop: int = -1
    others: dict[str, InputSource] = field(default_factory=dict)  # multi-input models: passed through
    box: tuple[float, float] = (0.0, 1.0)  # --range, or the model's input_range metadata
    given: dict[str, np.ndarray] = field(default_factory=dict)  # inputs given once (--set, --broadcast)

    def target_for(self, first: int, rows: int) -> TargetSpec | np.ndarray:
        """The targets of input rows [first, first + rows): rows of --target-file, or the strategy."""
        if self.target_rows is not None:
            return self.target_rows[first:first + rows]
        assert self.spec is not None  # plan() sets one of the two
        return self.spec

    def batches(self, start: int, batch_size: int) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        """(first row, attacked rows, the other inputs' rows) from row `start` to this run's stop."""
        streams = [self.source.batches(start, self.stop, batch_size),
                   *(source.batches(start, self.stop, batch_size) for source in self.others.values())]
        for (first, x), *rest in zip(*streams, strict=True):
            yield first, x, {name: rows for name, (_, rows) in zip(self.others, rest, strict=True)}

    @property
    def top_k(self) -> int:
        return int(getattr(self.criterion, "k", 0))


def _read_target_file(path: str, count: int, num_labels: int) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read --target-file {path}: {exc}") from None
    return check_target_file(loaded, count, num_labels)


def shard_rows(count: int, batch_size: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows [start, stop) of shard (I, N) of `count` inputs: the single-process run's batches dealt out in
    contiguous runs, so each shard attacks exactly the batches that run would (same rows, same results)."""
    if shard is None:
        return 0, count
    index, shards = shard
    batches = -(-count // batch_size)
    return (min(count, index * batches // shards * batch_size),
            min(count, (index + 1) * batches // shards * batch_size))


def open_model_inputs(model: ModelFile, inputs_path: str | os.PathLike, attack_input: str | None,
                      key: str | None, image_layout: str = "chw", image_scale: float = 1 / 255,
                      tokens: bool = False, given: frozenset[str] = frozenset(),
                      batch_axes: Mapping[str, int] | None = None) -> tuple[str, InputSource, dict[str, InputSource]]:
    """(the attacked input's name, its rows, the other inputs' rows by name, batch-first). A multi-input
    model's inputs come from one .npz / .h5 file keyed by input name (--key names the attacked array if
    it is stored under another name). tokens: the attacked input holds token ids (a discrete method).
    given: inputs that take no rows (given once, or a streaming model's carried state)."""
    info = model.info
    attacked = choose_attack_input(without(info, given), attack_input, tokens=tokens)
    others = tuple(i for i in info.inputs if i.name != attacked.name and i.name not in given)
    axes, _ = input_batch_axes(others, attacked, batch_axes or {})
    other_names = [i.name for i in others]
    chosen_key = key if key is not None or len(info.inputs) == 1 else attacked.name
    source = open_inputs(inputs_path, chosen_key, image_layout, image_scale)
    return attacked.name, source, open_passthrough(inputs_path, other_names, attacked.name, axes)


def inputs_given_once(model: ModelFile, inputs_path: str | os.PathLike, config: AttackConfig) -> dict[str, np.ndarray]:
    """--set literals and --broadcast arrays of the inputs file, checked against the model's inputs."""
    broadcast = {name: read_whole(inputs_path, name) for name in config.broadcast}
    return given_once(model.info, parse_set(config.set_values), broadcast, config.attack_input)


def first_rows(source: InputSource, others: dict[str, InputSource],
               rows: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first rows of every input: the fidelity check's probe."""
    probe = np.asarray(next(source.batches(0, rows, rows))[1], dtype=np.float64)
    return probe, {name: next(other.batches(0, rows, rows))[1] for name, other in others.items()}


def plan(model_path: str | os.PathLike | ModelFile, inputs_path: str | os.PathLike, config: AttackConfig) -> RunPlan:
    """Read the model once, open and check the inputs (every row finite and in the box), load the model,
    resolve targets."""
    attack = config.build_attack()
    model_file = model_path if isinstance(model_path, ModelFile) else open_model(model_path)
    constants, states = inputs_given_once(model_file, inputs_path, config), config.state_pairs()
    attacked, source, others = open_model_inputs(model_file, inputs_path, config.attack_input, config.key,
                                                 config.image_layout, config.image_scale, tokens=attack.discrete,
                                                 given=frozenset([*constants, *states.values()]),
                                                 batch_axes=config.batch_axes())
    box, box_note = (vocabulary_box(model_file.proto, attacked, config.box) if attack.discrete
                     else resolve_box(config.box, model_file.info))
    source_name = Path(inputs_path).name
    count = source.count if config.limit is None else min(source.count, config.limit)
    scan_inputs(source, count, box, source_name)
    check_passthrough_sources(others, source.count, count, source_name)
    probe, probe_others = first_rows(source, others, min(count, 4))
    settings = LoadSettings.from_config(config, box=box, attack_input=attacked, batch_axes=config.batch_axes(),
                                        queries_only=attack.queries_only, tokens=attack.discrete,
                                        constants=constants, states=states)
    model = load(model_file, settings, probe=probe, probe_name=source_name, probe_others=probe_others)
    if box_note:
        model.notes.insert(0, box_note)
    attack = _cheapest_route(attack, model, settings, config.gradients)
    spec, target_rows = None, None
    if config.target_file is not None:
        target_rows = _read_target_file(config.target_file, count, model.num_labels)
    else:
        spec = target_spec(config.target, model, attack)
    criterion = judge(model, attack, spec, config.top_k)
    if target_rows is not None and isinstance(criterion, TopKExclusionCriterion):
        check_exclusion_targets(target_rows, criterion.k, 0)  # before the result file exists
    if attack.needs_torch_gradients and model.gradients == "estimated":
        raise UnsupportedModelError(f"{attack.name} needs torch gradients, and this model has no torch graph: "
                                    f"{model.notes[-1]}")
    start, stop = shard_rows(count, config.batch_size, config.shard)
    return RunPlan(model, attack, source, source_name, spec, target_rows, criterion, count, start, stop, others,
                   box, constants)


def _cheapest_route(attack: Attack, model: LoadedModel, settings: LoadSettings, gradients: str) -> Attack:
    """--gradients auto on a model with no torch graph: a budgeted method runs as ml-square (the same
    eps, norm and kappa; random search needs a fraction of the queries of estimated gradients), said in
    one note; a minimal-norm method keeps the estimated gradients."""
    if gradients != "auto" or model.gradients != "estimated" or not attack.budgeted or attack.learns_from_set:
        return attack
    from .attacks import METHODS

    square = METHODS["ml-square"]
    taken = {name: value for name, value in attack.params().items()
             if name in ("eps", "norm", "kappa") and name in square.default_values()}
    chosen = square(**taken)
    prefix = "gradients are estimated from onnxruntime queries ("
    why = next((note[len(prefix):-1] for note in model.notes if note.startswith(prefix)), "it does not convert")
    scores_only(model, settings)
    model.notes[-1] = (f"no torch graph ({why}): {attack.name} runs as {chosen.name} (a black box: onnxruntime scores, "
                       f"eps {taken.get('eps')}, norm {taken.get('norm')}, at most {settings.max_queries} queries "
                       f"per input; --gradients estimate keeps {attack.name} on estimated gradients)")
    return chosen


def _identity(run: RunPlan, config: AttackConfig) -> dict:
    """The attributes a --resume must match: model, method, target, every parameter, seed, inputs."""
    model, attack = run.model, run.attack
    target_text = run.spec.describe() if run.spec else f"file:{Path(str(config.target_file)).name}"
    params = {**attack.params(), "box": list(run.box), "batch_size": config.batch_size,
              "top_k": run.top_k or None, "tolerance": config.tolerance, "gradients": model.gradients,
              "max_queries": config.max_queries if model.gradients != "torch" else None,
              "reduce": config.reduce if model.folded else None,
              **({"batch_axes": config.batch_axes()} if config.batch_axis else {}),
              **({"ctc": True} if config.ctc else {}),
              **({"set": sorted(config.set_values)} if config.set_values else {}),
              **({"broadcast": sorted(config.broadcast)} if config.broadcast else {}),
              **({"state": config.state_pairs(), "chunk": config.chunk, "per_chunk": config.per_chunk,
                  "context": config.context} if config.state else {}),
              **({"attack_input": model.input.name} if model.passthrough_inputs else {})}
    return {
        "model_sha256": model.info.sha256, "model_name": model.name, "method": attack.name,
        "target": target_text, "params": json.dumps(params, sort_keys=True), "seed": config.seed,
        "scores_kind": model.reader.kind.value, "threshold": model.reader.threshold,
        "n_inputs": run.stop - run.start,
        **(shard_attrs(run.source, run.count, config.shard, run.start, run.stop) if config.shard else {}),
    }


def _open_writer(out_path: Path, run: RunPlan, config: AttackConfig, inputs_path: str | os.PathLike) -> ResultWriter:
    model = run.model
    identity = _identity(run, config)
    if config.resume and out_path.exists():
        return ResultWriter.resume(out_path, identity, run.source, run.source_name, offset=run.start)
    attrs = {**identity, "labels": json.dumps(model.labels), "versions": json.dumps(versions()),
             "task": run.attack.task.value, "inputs": str(inputs_path), "notes": json.dumps(model.notes),
             "output": model.score_output.name, "device": str(model.device), "gradients": model.gradients,
             "reduce": config.reduce if model.folded else "none", "attack_input": model.input.name,
             "stall_reasons": json.dumps(STALL_REASONS), "memory_format": model.memory_format}
    dtypes = {info.name: info.dtype for info in model.passthrough_inputs}
    passthrough = {name: (source.sample_shape, dtypes[name]) for name, source in run.others.items()}
    return ResultWriter.create(out_path, run.source.sample_shape, model.input.dtype, model.num_labels, attrs,
                               rows_per_chunk=config.batch_size, overwrite=config.overwrite, passthrough=passthrough,
                               given=run.given)


def recorded_memory_format(path: Path) -> str:
    """The memory format a result file's rows were computed in (its root attribute memory_format), so a
    resume with --memory-format auto continues in it whatever this machine's stored choice now says;
    auto for a file that does not say (written before the attribute existed) or cannot be read."""
    try:
        with ResultFile.open(path) as stored:
            recorded = stored.attrs.get("memory_format")
    except OnnxAttackError:
        return "auto"  # the resume itself reports what is wrong with the file
    return recorded if recorded in LAYOUTS else "auto"


def run_attack(model_path: str | os.PathLike | ModelFile, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
               config: AttackConfig, progress: Progress | None = None) -> Path:
    """Attack every input and write the result file with the engine the config names (local: this
    process; ray: one Ray actor per shard, merged at the end); returns its path. Resumable. The model: a
    path, or a ModelFile read already (the local engine; Ray's actors read the file themselves). A CTC run
    (--ctc) then stores every row's greedy decode before and after (ctc.decode_run)."""
    if config.engine == "ray":
        from .engines.ray import run_ray

        path = run_ray(model_path.info.path if isinstance(model_path, ModelFile) else model_path, inputs_path,
                       out_path, config, progress)
    else:
        path = run_local(model_path, inputs_path, out_path, config, progress)
    if config.ctc:  # the strings read before and after, from the finished file
        from .ctc import decode_run

        decode_run(model_path, path, config)
    return path


def run_local(model_path: str | os.PathLike | ModelFile, inputs_path: str | os.PathLike, out_path: str | os.PathLike,
              config: AttackConfig, progress: Progress | None = None) -> Path:
    """Attack every input (of one shard, with --shard) in this process and write the result file. With
    --overwrite onto an existing file, the run is written beside it and renamed onto it once complete:
    an interrupted overwrite leaves the old file whole."""
    out_path = Path(out_path)
    inputs = (model_path if not isinstance(model_path, ModelFile) else model_path.info.path, inputs_path,
              config.target_file, config.labels_file)
    check_output_path(out_path, resume=config.resume, overwrite=config.overwrite, inputs=inputs)  # before any work
    replacing = config.overwrite and out_path.exists()
    written_path = replacement_path(out_path) if replacing else out_path
    if replacing:
        written_path.unlink(missing_ok=True)  # a replacement left by an interrupted overwrite is ours
    if config.resume and config.memory_format == "auto" and written_path.exists():
        config = replace(config, memory_format=recorded_memory_format(written_path))  # the rows so far's
    run = plan(model_path, inputs_path, config)
    torch.manual_seed(config.seed)
    writer = _open_writer(written_path, run, config, inputs_path)
    started = time.monotonic()
    elapsed_before = float(writer.handle.attrs.get("elapsed_s", 0.0))
    try:
        if isinstance(run.attack, SetAttack):
            _learn_or_reuse(run, config, run.attack, writer)
        written = ResultFile(writer.handle, out_path)
        start = written.rows
        successes, attacked_total = int(written.success.sum()), int(written.attacked.sum())
        rows = run.stop - run.start
        if progress:
            progress(start, rows, successes, attacked_total)
        for first, x, other_inputs in run.batches(run.start + start, config.batch_size):
            done = first - run.start

            def within(fraction: float, done: int = done, size: int = len(x), successes: int = successes,
                       attacked: int = attacked_total) -> None:
                if progress:
                    progress(done + fraction * size, rows, successes, attacked)

            result = _attack_batch(run, config, first, x, other_inputs, within)
            if run.model.surrogate:  # the first batch decides whether the surrogate's successes hold
                keep, note = judge_surrogate(result)
                run.model.notes.append(note)
                if keep or run.model.fallback is None:
                    run.model.keep_surrogate()
                else:
                    run.model.switch_to_estimated("the surrogate's successes did not hold in onnxruntime")
                    result = _attack_batch(run, config, first, x, other_inputs, within)
                writer.set_attrs(notes=json.dumps(run.model.notes), gradients=run.model.gradients)
            writer.append(result.rows())
            writer.set_attrs(elapsed_s=elapsed_before + time.monotonic() - started)
            successes += int(result.success.sum())
            attacked_total += int(result.attacked.sum())
            if progress:
                progress(first + len(x) - run.start, rows, successes, attacked_total)
        writer.set_attrs(complete=writer.rows_written >= rows,
                         elapsed_s=elapsed_before + time.monotonic() - started)
    finally:
        writer.close()
    if replacing:
        os.replace(written_path, out_path)
    return out_path


def _attack_batch(run: RunPlan, config: AttackConfig, first: int, x: np.ndarray, other_inputs: dict[str, np.ndarray],
                  progress: Callable[[float], None]) -> BatchResult:
    return attack_arrays(run.model, x, run.attack, run.target_for(first, len(x)), box=run.box, seed=config.seed,
                         first_index=first, source=run.source_name, criterion=run.criterion,
                         other_inputs=other_inputs, progress=progress)


SURROGATE_AGREEMENT = 0.5  # share of a surrogate's successes that must hold in onnxruntime to keep it


def judge_surrogate(result: BatchResult) -> tuple[bool, str]:
    """Whether a surrogate torch graph (one that missed the fidelity tolerance) is kept after the first
    batch: the share of the rows it reached that onnxruntime also judged reached, and the note saying so."""
    reached_torch = result.attacked & (result.torch_agrees == result.success)
    held = int((reached_torch & result.success).sum())
    claimed = int(reached_torch.sum())
    agreement = held / claimed if claimed else 0.0
    keep = claimed > 0 and agreement >= SURROGATE_AGREEMENT
    verdict = "kept" if keep else "dropped for gradients estimated from onnxruntime queries"
    return keep, (f"surrogate check on the first batch: {held} of the {claimed} rows the torch graph reached held in "
                  f"onnxruntime ({agreement:.0%}; at least {SURROGATE_AGREEMENT:.0%} keeps it): {verdict}")


def _learn_or_reuse(run: RunPlan, config: AttackConfig, attack: SetAttack, writer: ResultWriter) -> None:
    """A set attack learns from every row of the run before any is attacked, and the file keeps what it
    learnt (a resumed run reads it back instead of learning again)."""
    model = run.model
    stored = writer.learnt()
    if stored is not None:
        attack.use(torch.as_tensor(stored[0], device=model.device), stored[1])
        return

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first, x, other_inputs in run.batches(run.start, config.batch_size):
            x = to_input_dtype(np.asarray(x), model.input.dtype)
            others = model.checked_others(other_inputs, len(x), run.source_name)
            target = run.target_for(first, len(x))
            with model.passthrough.bind(others):
                _, _, goal, attacked = batch_targets(model, x, target, run.spec, run.criterion, config.seed, first)
                index = np.flatnonzero(attacked)
                if index.size:
                    with model.passthrough.bind({name: rows[index] for name, rows in others.items()}):
                        yield model.as_tensor(x[index]), torch.as_tensor(goal[index], device=model.device)

    batches = -(-(run.stop - run.start) // config.batch_size)
    learnt = attack.fit(model.victim(run.box), epoch, batches, run.criterion)
    writer.write_learnt(learnt.detach().cpu().numpy(), attack.learning_calls)


def versions() -> dict[str, str]:
    import onnx
    import onnx2torch
    import onnxruntime

    from . import __version__

    return {"onnxattack": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "onnx2torch": getattr(onnx2torch, "__version__", "1.5.15")}
