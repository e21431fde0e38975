"""Model file -> LoadedModel: checked ONNX, onnxruntime scorer, verified torch graph, score reader."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import onnx
import torch

from .bridge.convert import check_fidelity, to_torch
from .bridge.layout import choose_layout, layout_key
from .bridge.normalise import (
    attack_tensor,
    constants_to_initializers,
    drop_reshape_allowzero,
    fold_constants,
    inline_functions,
    prune_to,
    symbolic_batch,
)
from .bridge.trace import TracedGraph, traceable
from .config import MEMORY_FORMATS
from .errors import BadInputError, ConversionError, FidelityError, OnnxAttackError, UnsupportedModelError, first_line
from .estimated import QueryModel
from .feeds import input_batch_axes, without
from .inputs import check_numeric, check_rows
from .model import (
    ModelFile,
    ModelInfo,
    TensorInfo,
    choose_attack_input,
    choose_score_output,
    declared_range,
    detect_scores_kind,
    graph_inputs,
    label_classes,
    open_model,
    read_labels,
)
from .passthrough import BoundGraph, PassThroughInputs
from .runtime import (
    ONE_THREAD_NOTE,
    QDQ_NOTE,
    REDUCTIONS,
    FrameLayout,
    OrtScorer,
    has_qdq,
    needs_one_thread,
    to_input_dtype,
)
from .runtimes import DEFAULT_RUNTIME, RUNTIMES, Runtime, get_runtime
from .scores import ScoreReader
from .sources import EstimatedSource, GradientSource, ScoresOnlySource, TorchGraphSource
from .tokens import token_route, token_source
from .types import ScoresKind
from .victim import Victim

DEFAULT_TOLERANCE = 1e-4
GRADIENT_SOURCES = ("auto", "torch", "estimate")
PROBE_SIZE = 4
DEFAULT_BOX = (0.0, 1.0)


@dataclass(frozen=True)
class LoadSettings:
    """How to load a model: one object, built from AttackConfig for a run (`from_config`)."""

    device: str = "auto"
    output: str | None = None  # the score output (default: the first floating [batch, L] output)
    scores: str | ScoresKind = "auto"  # how to read it
    threshold: float | None = None
    labels_file: str | os.PathLike | None = None
    tolerance: float = DEFAULT_TOLERANCE  # max |torch - onnxruntime| accepted on the probe
    box: tuple[float, float] = DEFAULT_BOX
    gradients: str = "torch"  # torch (convert, else refuse) | estimate | auto (convert, else estimate)
    max_queries: int | None = None  # estimated gradients and black-box methods: the per-input query budget
    queries_only: bool = False  # a black-box method (Attack.queries_only): onnxruntime scores, counted, no graph
    reduce: str = "max"  # how score outputs [N, ..., L] fold to [N, L]
    batch_axes: Mapping[str, int] = field(default_factory=dict)  # output / input name -> its batch dim (--batch-axis)
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)  # inputs given once (--set, --broadcast)
    states: Mapping[str, str] = field(default_factory=dict)  # streaming: state output -> the input it feeds
    chunk: int | None = None  # streaming: samples per call (default: the model's input shape)
    per_chunk: bool = False  # streaming: a label per (chunk, label) instead of folding the chunks
    context: int = 0  # streaming: samples of the previous call repeated at the start of each call
    ctc: bool = False  # CTC frame logits: per label, the best per-frame log-probability
    attack_input: str | None = None  # the input perturbed (default: the only floating one)
    tokens: bool = False  # the attacked input holds token ids (a discrete method: tokens.TokenSource)
    seed: int = 0
    convert: bool = True  # False: onnxruntime only (validate's other models)
    trace: bool = True  # run the converted graph as a checked TorchScript trace where that pays (bridge/trace.py)
    memory_format: str = "auto"  # the graph's 4-D weights: auto (measured once per model, bridge/layout.py) |
    # channels-last | contiguous
    runtime: str = "onnxruntime"  # what gives the verdict's scores (runtimes.RUNTIMES; others need convert=False)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> LoadSettings:
        """The load settings of an AttackConfig (fields of the same name)."""
        names = {f.name for f in fields(cls)}
        taken = {name: getattr(config, name) for name in names if hasattr(config, name)}
        return cls(**{**taken, **overrides})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise BadInputError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


class ChunkedGraph(torch.nn.Module):
    """Runs a graph whose batch size is baked in on chunks of exactly that size."""

    def __init__(self, graph: torch.nn.Module, batch: int) -> None:
        super().__init__()
        self.graph = graph
        self.batch = batch

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, inputs[0].shape[0], self.batch):
            chunks = [tensor[start:start + self.batch] for tensor in inputs]
            missing = self.batch - chunks[0].shape[0]
            if missing:
                chunks = [torch.cat([chunk, chunk[-1:].expand(missing, *chunk.shape[1:])]) for chunk in chunks]
            parts.append(self.graph(*chunks)[: self.batch - missing])
        return torch.cat(parts)


class PerSampleGraph(torch.nn.Module):
    """A graph without a batch dim (one whole sequence per call, e.g. [T, F] -> [T', L]) run row by row."""

    def __init__(self, graph: torch.nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.graph(*(tensor[row] for tensor in inputs)) for row in range(inputs[0].shape[0])])


class BatchFirst(torch.nn.Module):
    """A time-major output [T, N, L] (FrameLayout.batch_axis) turned batch-first, as onnxruntime's side is."""

    def __init__(self, graph: torch.nn.Module, layout: FrameLayout) -> None:
        super().__init__()
        self.graph = graph
        self.layout = layout

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        z = self.graph(*inputs)
        return z.movedim(self.layout.batch_axis, 0) if self.layout.batch_axis else z


class FoldedGraph(torch.nn.Module):
    """[N, ..., L] -> [N, L]: folds the middle dims of a frame-level output, as onnxruntime's side does
    (FrameLayout: a CTC output's frames are log-softmaxed over the labels first)."""

    def __init__(self, graph: torch.nn.Module, layout: FrameLayout) -> None:
        super().__init__()
        self.graph = graph
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.graph(x)
        if z.dim() <= 2:
            return z
        if self.layout.ctc:
            z = torch.log_softmax(z, dim=-1)
        flat = z.reshape(z.shape[0], -1, z.shape[-1])
        return flat.amax(dim=1) if self.layout.reduce == "max" else flat.mean(dim=1)


@dataclass
class LoadedModel:
    """Everything an attack and its validation need about one model."""

    info: ModelInfo
    input: TensorInfo
    score_output: TensorInfo
    reader: ScoreReader
    scorer: OrtScorer
    num_labels: int
    labels: list[str]
    device: torch.device
    torch_dtype: torch.dtype
    box: tuple[float, float] = DEFAULT_BOX
    source: GradientSource | None = None  # where gradients come from (None: onnxruntime only)
    notes: list[str] = field(default_factory=list)
    passthrough_inputs: tuple[TensorInfo, ...] = ()  # a multi-input model's inputs that are not attacked
    passthrough: PassThroughInputs = field(default_factory=PassThroughInputs)
    per_sample: bool = False  # the model has no batch dim: each input row is one whole model input
    folded: bool = False  # its scores [N, ..., L] fold their middle dims (--reduce)
    memory_format: str = "contiguous"  # the torch graph's 4-D weights (bridge/layout.py)
    fallback: Callable[[str], None] | None = field(default=None, repr=False)  # switch to estimated gradients

    @property
    def surrogate(self) -> bool:
        """The torch graph misses the fidelity tolerance and is attacked through as a surrogate."""
        return isinstance(self.source, TorchGraphSource) and self.source.surrogate

    def keep_surrogate(self) -> None:
        """The surrogate passed its check: from now on it is simply the torch graph."""
        if isinstance(self.source, TorchGraphSource):
            self.source.surrogate = False

    def switch_to_estimated(self, why: str) -> None:
        """Drop the torch graph for gradients estimated from onnxruntime queries (a rejected surrogate)."""
        if self.fallback is None:
            raise UnsupportedModelError(f"{self.name}: {why}, and estimated gradients cannot replace it")
        self.fallback(why)
        self.fallback = None

    def checked_others(self, others: Mapping[str, np.ndarray] | None, rows: int | None = None,
                       where: str = "inputs") -> dict[str, np.ndarray]:
        """A batch's pass-through inputs checked (every one present, `rows` rows each, in the model's shape)
        and cast to the model's dtypes; a one-input model takes none."""
        if others and not self.passthrough_inputs:
            raise BadInputError(f"the model has one input ({self.input.name}); got other inputs {', '.join(others)}")
        return check_passthrough(self.passthrough_inputs, others or {}, rows, where, self.passthrough.axes)

    def bound(self, others: Mapping[str, np.ndarray] | None) -> contextlib.AbstractContextManager[None]:
        """Calls inside the block score rows of a batch whose pass-through inputs are `others` (checked)."""
        return self.passthrough.bind(self.checked_others(others))

    @property
    def gradients(self) -> str:
        """'torch' (autograd through the converted graph) or 'estimated' (onnxruntime queries)."""
        return self._source().kind

    @property
    def graph(self) -> torch.nn.Module | None:
        """The converted torch graph (None when gradients are estimated)."""
        return self.source.graph if isinstance(self.source, TorchGraphSource) else None

    @property
    def fidelity(self) -> float | None:
        return self.source.fidelity if isinstance(self.source, TorchGraphSource) else None

    @property
    def name(self) -> str:
        return self.info.name

    def _source(self) -> GradientSource:
        if self.source is None:
            raise UnsupportedModelError(f"{self.name}: loaded for onnxruntime scores only (no gradient source)")
        return self.source

    def ort_scores(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime scores of the original model (the verdict that counts)."""
        return self.scorer(x)

    def attack_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable attack tensor z (logits when the graph ends with an activation)."""
        return self._source().logits(x)

    def victim(self, box: tuple[float, float] | None = None) -> Victim:
        """What the attacks see of this model: its attack tensor, how to read it, the valid box."""
        box = self.box if box is None else box
        return self._source().victim(self.reader, box, self.passthrough if self.passthrough_inputs else None)

    def queries_spent(self) -> np.ndarray | None:
        """Queries per row of the batch last attacked (None with torch gradients)."""
        return self._source().queries_spent()

    def stall_reasons(self) -> np.ndarray | None:
        """Why each row of the batch last attacked stopped early (None with torch gradients)."""
        return self._source().stall_reasons()

    def torch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The scores the attack saw: the torch graph's, or onnxruntime's when gradients are estimated."""
        return self._source().scores(x, self.reader)

    def as_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=self.torch_dtype, device=self.device)


def _probe_batch(input_info: TensorInfo, size: int, box: tuple[float, float], seed: int, axis: int = 0) -> np.ndarray:
    """Random rows for the fidelity check: uniform in the box (zeros for a pass-through integer input);
    batch-first, whatever dim `axis` of the model's input holds the batch."""
    sample_shape = batch_first_shape(input_info, axis)[1:]
    if not all(isinstance(dim, int) and dim > 0 for dim in sample_shape):
        raise BadInputError(f"input {input_info.name!r} has shape {list(input_info.shape)}: its sample "
                            f"dims are not fixed, so pass a probe batch of real inputs")
    shape = (size, *(int(dim) for dim in sample_shape if isinstance(dim, int)))
    if not input_info.is_float:
        return np.zeros(shape, dtype=input_info.dtype)
    return np.random.default_rng(seed).uniform(box[0], box[1], size=shape)


def batch_first_shape(info: TensorInfo, axis: int) -> tuple[int | str | None, ...]:
    """An input's declared shape with its batch dim (`axis`) moved first, as its rows are held."""
    shape = list(info.shape)
    return (shape.pop(axis), *shape) if axis else tuple(shape)


def check_passthrough(inputs: tuple[TensorInfo, ...], given: Mapping[str, np.ndarray],
                      rows: int | None = None, where: str = "inputs",
                      axes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Every pass-through input present, real and finite, shaped as the model takes it (held batch-first:
    an input whose batch is dim `axes[name]` has it moved first), with one row per row of the batch; cast
    to the model's dtype (integer values must be whole)."""
    checked: dict[str, np.ndarray] = {}
    axes = axes or {}
    for info in inputs:
        if info.name not in given:
            raise BadInputError(f"{where} has no array {info.name!r} for the model's input {info.name!r} "
                                f"(give every input of the model, keyed by its name)")
        array = np.asarray(given[info.name])
        label = f"{where}:{info.name}"
        check_numeric(array.dtype, label)
        if rows is not None and len(array) != rows:
            raise BadInputError(f"{label} has {len(array)} rows, the attacked input {rows}")
        held = TensorInfo(info.name, info.dtype, batch_first_shape(info, axes.get(info.name, 0)))
        check_sample_shape(held, tuple(array.shape[1:]), label)
        if array.size and not np.isfinite(array.astype(np.float64, copy=False)).all():
            raise BadInputError(f"{label}: NaN or infinite values")
        if not info.is_float and array.size and not np.array_equal(np.rint(array), array):
            raise BadInputError(f"{label}: the model takes {info.dtype}, the values are not whole numbers")
        checked[info.name] = to_input_dtype(array, info.dtype)
    return checked


def check_sample_shape(input_info: TensorInfo, sample_shape: tuple[int, ...], where: str = "inputs",
                       per_sample: bool = False) -> None:
    """Inputs must come in the model's own layout: the engine never guesses one (per_sample: a row is
    the model's whole input, which has no batch dim)."""
    expected = tuple(input_info.shape if per_sample else input_info.shape[1:])
    if len(expected) != len(sample_shape) or any(
            isinstance(e, int) and e > 0 and e != s for e, s in zip(expected, sample_shape, strict=True)):
        raise BadInputError(f"{where} has rows of shape {list(sample_shape)}, the model's input {input_info.name!r} "
                            f"takes {list(expected)} (give inputs in the model's own layout)")


def fixed_batch(input_info: TensorInfo) -> int | None:
    """The batch size baked into the input, if any (-1 and 0 are how some exporters write a dynamic one)."""
    first = input_info.shape[0] if input_info.shape else None
    return first if isinstance(first, int) and first > 0 else None


def _serialized(proto: onnx.ModelProto) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise UnsupportedModelError(f"the model is too large to hand to onnxruntime in one piece: {exc}") from None


def _ort_scorer(proto: onnx.ModelProto, input_info: TensorInfo, output_name: str, device: str,
                probe: np.ndarray, notes: list[str], passthrough: PassThroughInputs, per_sample: bool,
                layout: FrameLayout, runtime: Runtime = RUNTIMES[DEFAULT_RUNTIME]) -> OrtScorer:
    fixed = None if per_sample else fixed_batch(input_info)
    one_thread = needs_one_thread(proto)
    make_session = runtime.session
    original = OrtScorer(make_session(_serialized(proto), device, exact_qdq=has_qdq(proto), one_thread=one_thread),
                         input_info.name,
                         input_info.dtype, output_name, fixed_batch=fixed, layout=layout, passthrough=passthrough,
                         per_sample=per_sample)
    if runtime.name != DEFAULT_RUNTIME:
        notes.append(f"scored by {runtime.describe()} ({', '.join(original.providers)}), not onnxruntime")
    elif has_qdq(proto):
        notes.append(QDQ_NOTE)
    if one_thread and runtime.name == DEFAULT_RUNTIME:
        notes.append(ONE_THREAD_NOTE)
    if device == "cuda" and runtime.name == DEFAULT_RUNTIME and "CUDAExecutionProvider" not in original.providers:
        notes.append("onnxruntime validates on the CPU: its CUDA provider is not available "
                     "(install the 'gpu' extra, onnxruntime-gpu, instead of 'cpu')")
    if fixed is None:
        return original
    renamed = symbolic_batch(proto)
    if len(probe) < 2:  # a batch of one proves nothing about batching
        probe = np.concatenate([probe, probe[::-1] * 0.5])
    if renamed is not None:
        try:
            session = make_session(_serialized(renamed), device, quiet=True, exact_qdq=has_qdq(proto),
                                   one_thread=one_thread)
            batched = OrtScorer(session, input_info.name, input_info.dtype, output_name, layout=layout,
                                passthrough=passthrough)
            if np.allclose(batched(probe), original(probe), atol=1e-6, rtol=1e-5):
                notes.append(f"batch size {fixed} is baked into the model; onnxruntime runs it batched "
                             f"after renaming the batch dim (checked against the original)")
                return batched
        except Exception:  # the batch size is baked into the graph too
            pass
    return _with_fixed_batch_note(original, fixed, notes)


def _with_fixed_batch_note(original: OrtScorer, fixed: int, notes: list[str]) -> OrtScorer:
    notes.append(f"batch size {fixed} is baked into the model's graph: it runs {fixed} sample(s) "
                 f"at a time (slower)")
    return original


def _score_graph(proto: onnx.ModelProto, tensor_name: str, score_output: str) -> onnx.ModelProto:
    graph = constants_to_initializers(inline_functions(proto))
    return fold_constants(drop_reshape_allowzero(prune_to(graph, tensor_name, score_output)))


def _torch_graph(score_graph: onnx.ModelProto, fixed: int | None, probe: np.ndarray,
                 dtype: torch.dtype, device: torch.device, notes: list[str],
                 bind: Callable[[torch.nn.Module], torch.nn.Module], layout: FrameLayout) -> torch.nn.Module:
    """The converted graph as x -> scores (`bind` adds a multi-input model's pass-through inputs; a
    time-major output is made batch-first per call, as onnxruntime's side does)."""

    def convert(graph: onnx.ModelProto) -> torch.nn.Module:
        converted = to_torch(graph).to(device)
        return BatchFirst(converted, layout) if layout.batch_axis else converted

    renamed = symbolic_batch(score_graph) if fixed is not None else None
    if renamed is not None and fixed is not None:
        chunked = bind(ChunkedGraph(convert(score_graph), fixed))
        rows = probe if len(probe) != fixed else np.concatenate([probe, probe[:1]])  # a batch unlike the baked one
        try:
            graph = bind(convert(renamed))
            with torch.no_grad():
                batch = torch.as_tensor(rows, dtype=dtype, device=device)
                # a Reshape with the batch size baked in runs, but merges rows: compare with the chunked graph
                batched, reference = graph(batch), chunked(batch)
                if batched.shape == reference.shape and torch.allclose(batched, reference, atol=1e-5, rtol=1e-4):
                    return graph
        except OnnxAttackError:
            raise
        except Exception:  # the batch size is baked into the graph too
            pass
        notes.append(f"the torch graph also runs {fixed} sample(s) at a time")
        return chunked
    return bind(convert(score_graph))


def load(model: str | os.PathLike | ModelFile, settings: LoadSettings | None = None, *,
         probe: np.ndarray | None = None, probe_name: str = "the probe batch",
         probe_others: Mapping[str, np.ndarray] | None = None, **overrides: Any) -> LoadedModel:
    """Load a model (a path, or a ModelFile already read) and build everything an attack needs; raises
    typed errors with one line. `settings` (LoadSettings) says how; keyword overrides change single
    fields (`load("m.onnx", box=(-1, 1), gradients="auto")`).

    probe: a few real inputs for the fidelity check (random ones in the box when absent), and
    probe_others the same rows of a multi-input model's other inputs (zeros / uniform in the box when
    absent); probe_name: what error messages call them (the user's input file)."""
    settings = replace(settings or LoadSettings(), **overrides)
    device, output, scores, threshold = settings.device, settings.output, settings.scores, settings.threshold
    box, seed, reduce, gradients = settings.box, settings.seed, settings.reduce, settings.gradients
    if reduce not in REDUCTIONS:
        raise BadInputError(f"unknown reduction {reduce!r} (expected one of: {', '.join(REDUCTIONS)})")
    if gradients not in GRADIENT_SOURCES:
        raise BadInputError(f"unknown gradient source {gradients!r} (expected one of: {', '.join(GRADIENT_SOURCES)})")
    if settings.memory_format not in MEMORY_FORMATS:
        raise BadInputError(f"unknown memory format {settings.memory_format!r} (expected one of: "
                            f"{', '.join(MEMORY_FORMATS)})")
    torch_device = resolve_device(device)
    model_file = model if isinstance(model, ModelFile) else open_model(model)
    if settings.states:  # a streaming model: called chunk by chunk, its state carried
        from .streaming import load_streaming

        return load_streaming(model_file, settings, torch_device, probe, probe_name)
    proto, info = model_file.proto, model_file.info
    constants = dict(settings.constants)
    input_info = choose_attack_input(without(info, set(constants)), settings.attack_input, tokens=settings.tokens)
    others = tuple(i for i in info.inputs if i.name != input_info.name and i.name not in constants)
    score_output = choose_score_output(info, output)
    unknown = [name for name in settings.batch_axes
               if name != score_output.name and name not in {i.name for i in others}]
    if unknown:
        raise BadInputError(f"--batch-axis {unknown[0]}=...: only the score output's batch dim and the pass-through "
                            f"inputs' can be named ({', '.join([score_output.name, *(i.name for i in others)])}); "
                            f"the attacked input takes its batch first")
    axes, axis_notes = input_batch_axes(others, input_info, settings.batch_axes)
    passthrough = PassThroughInputs(tuple(i.name for i in others), axes, constants)

    detected = detect_scores_kind(proto, score_output.name)
    kind = detected if scores in ("auto", None) else ScoresKind.parse(str(getattr(scores, "value", scores)))
    layout = FrameLayout(reduce, settings.batch_axes.get(score_output.name), ctc=settings.ctc)
    if layout.ctc:  # the best log-probability of any frame, per symbol: it appears when above log 0.5
        kind, threshold = ScoresKind.LOGITS, math.log(0.5) if threshold is None else threshold
    labels_only = kind is ScoresKind.LABELS
    tensor_name, head = attack_tensor(proto, score_output.name, cut_activation=(kind == detected and not labels_only))
    per_sample = probe is not None and np.ndim(probe) == len(input_info.shape) + 1
    folded = len(score_output.shape) > 2 or per_sample  # a whole-sequence model's scores are per frame
    if folded and head is not None and not (head == "sigmoid" and reduce == "max"):
        # max commutes with a per-element sigmoid; mean (or a softmax) does not: attack the real output
        tensor_name, head = score_output.name, None
    try:
        reader = ScoreReader.create(kind, threshold, head, score_output.dtype)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None

    notes: list[str] = [*axis_notes]
    if constants:
        notes.append(f"input(s) {', '.join(constants)} given once (--set / --broadcast): passed to every call "
                     f"unchanged")
    if probe is None:
        probe = _probe_batch(input_info, PROBE_SIZE, box, seed)
    probe = np.asarray(probe)
    check_rows(probe, box, probe_name)
    check_sample_shape(input_info, tuple(probe.shape[1:]), probe_name, per_sample)
    if per_sample:
        notes.append(f"input {input_info.name!r} {list(input_info.shape)} has no batch dim: each input row is one "
                     f"whole model input, run on its own")
    if probe_others is None:
        probe_others = {i.name: _probe_batch(i, len(probe), box, seed, axes[i.name]) for i in others}
    probe_others = check_passthrough(others, probe_others, len(probe), probe_name, axes)
    with passthrough.bind(probe_others):  # the probe's rows of the other inputs (multi-input models)
        fixed = None if per_sample else fixed_batch(input_info)
        scorer = _ort_scorer(proto, input_info, score_output.name, torch_device.type, probe, notes, passthrough,
                             per_sample, layout, get_runtime(settings.runtime))
        if labels_only and len(score_output.shape) < 2:
            scorer.classes = _classes_or_refuse(proto, score_output)
        probe_scores = scorer(probe)
        folded = folded or scorer.raw_rank > 2  # declared shapes can be wrong (ddddocr declares [1, seqlen])
        if layout.inferred:
            notes.append(f"output {score_output.name!r} is time-major: its batch is dim {layout.batch_axis} "
                         f"(inferred from the probe; --batch-axis {score_output.name}=AXIS overrides)")
        if layout.ctc:
            notes.append("CTC scores: per label, the best per-frame log-probability; a symbol appears when it "
                         "exceeds log 0.5 (its frame's most likely symbol)")
        if folded:
            shape = list(score_output.shape) if len(score_output.shape) > 2 else f"of rank {scorer.raw_rank}"
            notes.append(f"scores {'[frames, ..., labels] per row' if per_sample else shape} are folded to "
                         f"[batch, labels] by {reduce} over the middle dims (--reduce)")
        if probe_scores.ndim != 2:
            raise UnsupportedModelError(f"output {score_output.name!r} gives scores of shape "
                                        f"{list(probe_scores.shape)}, not [batch, labels]")
        num_labels = int(probe_scores.shape[1])
        labels = _label_names(info, settings.labels_file, num_labels)
        torch_dtype = (torch.from_numpy(np.zeros(0, dtype=input_info.dtype)).dtype
                       if input_info.is_float else torch.int64 if settings.tokens else torch.float32)
        loaded = LoadedModel(info=info, input=input_info, score_output=score_output, reader=reader,
                             scorer=scorer, num_labels=num_labels, labels=labels, device=torch_device,
                             torch_dtype=torch_dtype, box=(float(box[0]), float(box[1])), notes=notes,
                             passthrough_inputs=others, passthrough=passthrough, per_sample=per_sample,
                             folded=folded)
        if not settings.convert:
            return loaded
        if settings.queries_only:
            return _scores_only(loaded, kind, settings)
        if labels_only:
            raise UnsupportedModelError(labels_only_reason(score_output.name))

        def estimate(why: str) -> None:
            logits = None if head is None else _logits_scorer(proto, input_info, tensor_name, score_output.name,
                                                              torch_device.type, probe, per_sample, layout,
                                                              passthrough)
            _estimated(loaded, kind, settings, why, logits)

        if settings.tokens:  # token ids: the graph cut after its embedding lookup
            logits = None if head is None else _logits_scorer(proto, input_info, tensor_name, score_output.name,
                                                              torch_device.type, probe, per_sample, layout,
                                                              passthrough)
            loaded.source = token_source(proto, input_info, others, passthrough, reader, scorer, logits, tensor_name,
                                         score_output.name, probe, settings.tolerance, torch_device)
            return loaded
        if gradients == "estimate":
            estimate("asked for with --gradients estimate")
            return loaded
        try:
            loaded.source = _torch_source(loaded, _score_graph(proto, tensor_name, score_output.name), fixed, probe,
                                          settings.tolerance, reduce, surrogate=gradients == "auto",
                                          trace=settings.trace, memory_format=settings.memory_format)
        except (ConversionError, FidelityError) as exc:
            if gradients == "torch":
                raise
            estimate(first_line(exc))
            return loaded
        if gradients == "auto":
            loaded.fallback = estimate  # a surrogate whose successes do not hold in onnxruntime is dropped
        return loaded


def resolve_box(requested: tuple[float, float] | None, info: ModelInfo) -> tuple[tuple[float, float], str | None]:
    """The input box: the user's, else the model's `input_range` metadata, else [0, 1]; with a note
    when the metadata chose it."""
    if requested is not None:
        return (float(requested[0]), float(requested[1])), None
    declared = declared_range(info)
    if declared is None:
        return DEFAULT_BOX, None
    return declared, (f"input range [{declared[0]:g}, {declared[1]:g}] from the model's metadata (input_range); "
                      f"--range overrides it")


def _label_names(info: ModelInfo, labels_file: str | os.PathLike | None, num_labels: int) -> list[str]:
    labels = read_labels(info, labels_file)
    if labels is None:
        return [str(i) for i in range(num_labels)]
    if len(labels) != num_labels:
        raise BadInputError(f"{len(labels)} label names for {num_labels} labels")
    return labels


def _torch_source(loaded: LoadedModel, score_graph: onnx.ModelProto, fixed: int | None, probe: np.ndarray,
                  tolerance: float, reduce: str, surrogate: bool = False, trace: bool = True,
                  memory_format: str = "auto") -> TorchGraphSource:
    """The converted score graph as x -> scores (row by row for a model without a batch dim, with the
    pass-through inputs bound, frame scores folded), checked against onnxruntime on the probe. With
    `surrogate`, a graph that misses the tolerance is kept as a surrogate (the pipeline then measures
    whether its successes hold in onnxruntime)."""
    order = tuple(value.name for value in graph_inputs(score_graph))

    def bind(graph: torch.nn.Module) -> torch.nn.Module:
        graph = PerSampleGraph(graph) if loaded.per_sample else graph
        if loaded.passthrough:  # rows of the other inputs, or inputs given once
            return BoundGraph(graph, order, loaded.input.name, loaded.passthrough)
        return graph

    layout = loaded.scorer.layout
    graph = _torch_graph(score_graph, fixed, probe, loaded.torch_dtype, loaded.device, loaded.notes, bind, layout)
    graph = FoldedGraph(graph, layout) if loaded.folded else graph
    try:
        fidelity = check_fidelity(graph, loaded.reader, loaded.scorer, probe, tolerance, loaded.torch_dtype,
                                  loaded.device)
    except FidelityError as exc:
        if not surrogate or exc.difference is None:
            raise
        loaded.notes.append(f"the torch graph differs from onnxruntime by {exc.difference:.3g} (over --tolerance "
                            f"{tolerance:g}): attacked through it as a surrogate, every verdict onnxruntime's")
        return TorchGraphSource(graph, exc.difference, surrogate=True)
    graph, fidelity = _in_faster_layout(loaded, graph, probe, tolerance, memory_format, fidelity)
    if trace and fixed is None and not loaded.per_sample and not loaded.passthrough_inputs and traceable(score_graph):
        graph = TracedGraph(graph, tolerance=max(tolerance, 1e-5))
    return TorchGraphSource(graph, fidelity)


def _in_faster_layout(loaded: LoadedModel, graph: torch.nn.Module, probe: np.ndarray, tolerance: float,
                      memory_format: str, fidelity: float) -> tuple[torch.nn.Module, float]:
    """The graph with its 4-D weights channels-last where that was asked for or measured faster
    (bridge/layout.py), checked against onnxruntime again; said in a note. Graphs bound to pass-through
    inputs or run row by row keep their layout: the copy would not share their per-batch state."""
    x = torch.as_tensor(probe, dtype=loaded.torch_dtype, device=loaded.device)
    asked = memory_format == "channels-last"
    if not x.is_floating_point() or loaded.passthrough_inputs or loaded.per_sample:
        if asked:
            loaded.notes.append("memory format contiguous: channels-last is not applied to a model with "
                                "pass-through inputs or run row by row")
        return graph, fidelity
    key = layout_key(loaded.info.sha256, loaded.score_output.name, loaded.input.name, loaded.device)
    choice = choose_layout(graph, x, memory_format, key, tolerance)
    if choice.memory_format != "channels-last":
        if asked:
            loaded.notes.append(f"memory format {choice.why}")
        return graph, fidelity
    try:
        fidelity = check_fidelity(choice.graph, loaded.reader, loaded.scorer, probe, tolerance, loaded.torch_dtype,
                                  loaded.device)
    except (ConversionError, FidelityError):
        loaded.notes.append("memory format contiguous: the channels-last graph missed the onnxruntime check")
        return graph, fidelity
    loaded.notes.append(f"memory format {choice.why}")
    loaded.memory_format = "channels-last"
    return choice.graph, fidelity


def _logits_scorer(proto: onnx.ModelProto, input_info: TensorInfo, tensor_name: str, score_output: str, device: str,
                   probe: np.ndarray, per_sample: bool, layout: FrameLayout,
                   passthrough: PassThroughInputs) -> OrtScorer | None:
    """onnxruntime on the graph cut before its final Sigmoid / Softmax: the logits themselves, which a
    saturated probability (exactly 0 or 1 in float32) no longer shows. None when that graph does not run."""
    try:
        pruned = prune_to(inline_functions(proto), tensor_name, score_output)
        scorer = _ort_scorer(pruned, input_info, tensor_name, device, probe, [], passthrough, per_sample, layout)
        scorer(probe)
    except Exception:  # a graph onnxruntime refuses once cut: estimate on the real output instead
        return None
    return scorer


def _estimated(loaded: LoadedModel, kind: ScoresKind, settings: LoadSettings, why: str,
               logits: OrtScorer | None = None) -> LoadedModel:
    """Switch a loaded model to gradients estimated from onnxruntime queries. When the graph ends in a
    Sigmoid / Softmax and `logits` queries the tensor before it, the estimate is taken on the logits
    (the attack tensor keeps its head, as with torch gradients); otherwise on the real output."""
    if logits is None:
        loaded.reader = ScoreReader.create(kind, settings.threshold, head=None, output_dtype=loaded.score_output.dtype)
    score_fn = loaded.ort_scores if logits is None else logits
    query_model = QueryModel(score_fn, loaded.box, seed=settings.seed, neutral=loaded.reader.attack_threshold)
    if loaded.passthrough_inputs:  # each query carries the pass-through rows of the row it perturbs
        query_model.row_binding = loaded.passthrough.select
    loaded.source = EstimatedSource(query_model, loaded.ort_scores, settings.max_queries)
    on = "" if logits is None else f" of the logits before the final {loaded.reader.head}"
    loaded.notes.append(f"gradients are estimated from onnxruntime queries{on} ({why})")
    return loaded


def labels_only_reason(output: str) -> str:
    return (f"output {output!r} holds labels only (no scores): there is no gradient to follow or estimate; "
            f"attack it with the label-only method (--method ml-hsj)")


def _classes_or_refuse(proto: onnx.ModelProto, output: TensorInfo) -> np.ndarray:
    classes = label_classes(proto, output.name)
    if classes is None:
        raise UnsupportedModelError(f"output {output.name!r} holds class indices, and no ai.onnx.ml classifier "
                                    f"says which classes they index (give a [batch, labels] 0/1 output)")
    return classes


def scores_only(loaded: LoadedModel, settings: LoadSettings) -> LoadedModel:
    """A model loaded with estimated gradients switched to the black-box view (`--gradients auto` with a
    budgeted method: ml-square instead); its estimated-gradient note is replaced."""
    loaded.notes = [note for note in loaded.notes if not note.startswith("gradients are estimated")]
    return _scores_only(loaded, loaded.reader.kind, settings)


def _scores_only(loaded: LoadedModel, kind: ScoresKind, settings: LoadSettings) -> LoadedModel:
    """A black-box method sees onnxruntime's real output (no activation cut off) through a victim that
    counts every row it sends; the graph is not converted."""
    loaded.reader = ScoreReader.create(kind, settings.threshold, head=None)
    loaded.source = ScoresOnlySource(loaded.ort_scores, settings.max_queries)
    loaded.notes.append(f"a black box: the attack queries onnxruntime scores only (at most "
                        f"{settings.max_queries} per input)" if settings.max_queries else
                        "a black box: the attack queries onnxruntime scores only")
    return loaded


def _sample_shape(input_info: TensorInfo, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The sample dims to probe with: the user's --shape (with or without the batch dim), else the
    model's own when they are all fixed; None when they are symbolic and no shape was given."""
    declared = tuple(input_info.shape[1:])
    if shape is not None:
        given = tuple(shape[1:]) if len(shape) == len(input_info.shape) else tuple(shape)
        if len(given) != len(declared) or any(isinstance(d, int) and d > 0 and d != g
                                              for d, g in zip(declared, given, strict=True)):
            raise BadInputError(f"--shape {','.join(map(str, shape))} does not fit input {input_info.name!r} "
                                f"of shape {list(input_info.shape)}")
        return given
    if all(isinstance(dim, int) and dim > 0 for dim in declared):
        return tuple(int(dim) for dim in declared if isinstance(dim, int))
    return None


def inspect_model(model: str | os.PathLike | ModelFile, *, output: str | None = None, scores: str = "auto",
                  labels_file: str | os.PathLike | None = None, device: str = "cpu",
                  box: tuple[float, float] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                  shape: tuple[int, ...] | None = None, probe: np.ndarray | None = None,
                  attack_input: str | None = None, probe_others: Mapping[str, np.ndarray] | None = None) -> dict:
    """Everything `onnxattack inspect` reports; conversion problems are reported, not raised.

    shape (the sample dims) or probe (real inputs) fix symbolic sample dims for the fidelity check;
    without either, a model with symbolic sample dims is reported as unchecked (converts None).
    `attack_route` says how `attack --gradients auto` would attack it: "torch", "estimated" (the graph
    does not convert or is unfaithful: gradients from onnxruntime queries), "labels" (its score output
    holds labels only: the label-only method), "ml-hotflip" (token ids that feed an embedding lookup:
    only that method attacks them) or None (it cannot)."""
    from .bridge.convert import blocking_ops

    model_file = model if isinstance(model, ModelFile) else open_model(model)
    proto, info = model_file.proto, model_file.info
    box, box_note = resolve_box(box, info)
    try:  # a choice left to the user (several candidates, an unknown name) is exit 2, raised from here
        attacked: TensorInfo | None = choose_attack_input(info, attack_input)
        refusal = None
    except UnsupportedModelError as exc:  # an integer input: described, then refused (exit 3)
        attacked, refusal = None, str(exc)
    report: dict = {
        "path": str(info.path), "sha256": info.sha256, "producer": info.producer,
        "ir_version": info.ir_version, "opsets": info.opsets,
        "inputs": [i.to_dict() for i in info.inputs], "outputs": [o.to_dict() for o in info.outputs],
        "metadata": {k: v for k, v in info.metadata.items() if k != "labels"},
        "labels": read_labels(info, labels_file), "score_output": None, "scores_kind": None,
        "converts": False, "blocking_ops": [], "reason": None, "fidelity": None, "notes": [],
        "attack_input": attacked.name if attacked else None, "input_range": list(box), "attack_route": None,
    }
    if box_note:
        report["notes"].append(box_note)
    try:
        chosen = choose_score_output(info, output)
        report["score_output"] = chosen.name
        report["scores_kind"] = detect_scores_kind(proto, chosen.name).value
        if report["scores_kind"] == ScoresKind.LABELS.value and attacked is not None:  # only ml-hsj attacks it
            report.update(attack_route="labels", reason=labels_only_reason(chosen.name))
            return report
        tensor_name, _ = attack_tensor(proto, chosen.name, cut_activation=True)
        report["attack_tensor"] = tensor_name
        report["blocking_ops"] = blocking_ops(_score_graph(proto, tensor_name, chosen.name))
    except OnnxAttackError as exc:
        report["reason"] = str(exc)
        return report
    if attacked is None:
        report.update(reason=refusal, attack_route=token_route(proto, info, attack_input))
        return report
    if probe is None:
        sample = _sample_shape(attacked, shape)
        if sample is None:
            dims = list(attacked.shape)
            report.update(converts=None, reason=f"input {attacked.name!r} has symbolic sample dims {dims}: "
                                                f"conversion not checked; pass --shape D1,D2,... or --probe INPUTS")
            return report
        probe = np.random.default_rng(0).uniform(box[0], box[1], size=(PROBE_SIZE, *sample))
    unfixed = [i.name for i in info.inputs if i.name != attacked.name and _sample_shape(i, None) is None]
    if probe_others is None and unfixed:
        report.update(converts=None, reason=f"input(s) {', '.join(unfixed)} have symbolic sample dims: conversion "
                                            f"not checked; pass --probe INPUTS with an array for every input")
        return report
    try:
        loaded = load(model_file, device=device, output=output, scores=scores, labels_file=labels_file,
                      tolerance=tolerance, box=box, probe=probe, gradients="torch", attack_input=attack_input,
                      probe_others=probe_others)
    except (ConversionError, FidelityError) as exc:
        report["reason"] = str(exc)
        if not [i for i in info.inputs if i.name != attacked.name]:  # estimated gradients take one input
            report["attack_route"] = "estimated"
        return report
    except OnnxAttackError as exc:
        report["reason"] = str(exc)
        return report
    report.update(converts=True, attack_route="torch", fidelity=loaded.fidelity,
                  notes=[*report["notes"], *loaded.notes], labels=loaded.labels,
                  num_labels=loaded.num_labels, threshold=loaded.reader.threshold,
                  scores_kind=loaded.reader.kind.value, providers=loaded.scorer.providers)
    return report
