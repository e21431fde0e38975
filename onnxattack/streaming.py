"""A streaming model with state, seen as a model whose sample is a whole sequence.

A streaming model (silero-vad: an audio chunk [batch, 576] and a state [2, batch, 128] in, a speech
probability [batch, 1] and the next state out) is called chunk by chunk, each call's state output
(`--state OUT=IN`) fed to the next. Here a row of the attacked input is the whole sequence
([n_chunks * chunk, ...]), the model is run over its chunks with the state carried (zeros first, or
the value given with --set / --broadcast), and the per-chunk scores fold by --reduce to one score
per label, or stay apart with --per-chunk (one label per chunk and label). The perturbation is on
the sequence; onnxruntime's chunk loop (`StreamingScorer`) gives the verdict, and the torch graph,
converted with its state outputs, runs the same loop (`StreamingGraph`) for gradients. A model that
does not convert is attacked with gradients estimated from the onnxruntime loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .bridge.convert import check_fidelity, to_torch
from .bridge.normalise import constants_to_initializers, fold_constants, inline_functions
from .errors import BadInputError, ConversionError, FidelityError, UnsupportedModelError, first_line
from .feeds import input_batch_axes, without
from .inputs import check_rows
from .loader import (
    PROBE_SIZE,
    LoadedModel,
    LoadSettings,
    _estimated,
    _scores_only,
    _serialized,
    labels_only_reason,
)
from .model import (
    ModelFile,
    TensorInfo,
    choose_attack_input,
    choose_score_output,
    detect_scores_kind,
    graph_inputs,
    read_labels,
)
from .passthrough import PassThroughInputs
from .runtime import OrtScorer, fold_middle, make_session, to_input_dtype
from .scores import ScoreReader
from .sources import TorchGraphSource
from .types import ScoresKind


@dataclass(frozen=True)
class Stream:
    """How a sequence is cut and the state carried: `chunk` samples of the attacked input's dim 1 per
    call; `states` (output, input) pairs; each state input's batch dim and its first value (one row,
    repeated for the batch)."""

    chunk: int
    states: tuple[tuple[str, str], ...]
    state_axes: Mapping[str, int]
    initial: Mapping[str, np.ndarray]  # state input -> its value for a batch of one (batch dim kept)
    reduce: str = "max"
    per_chunk: bool = False
    context: int = 0  # samples of the previous call each call starts with (silero-vad's wrapper: 64)

    @property
    def outputs(self) -> list[str]:
        return [output for output, _ in self.states]

    @property
    def inputs(self) -> list[str]:
        return [feeds for _, feeds in self.states]

    @property
    def step(self) -> int:
        """New samples per call: the chunk less the context it repeats."""
        return self.chunk - self.context

    def count(self, length: int) -> int:
        if length % self.step or not length:
            what = f"chunks of {self.chunk}" if not self.context else \
                f"steps of {self.step} (--chunk {self.chunk} less --context {self.context})"
            raise BadInputError(f"a sequence of {length} samples is not a whole number of {what}")
        return length // self.step

    def first_states(self, rows: int) -> dict[str, np.ndarray]:
        return {name: np.repeat(value, rows, axis=self.state_axes[name]) if value.shape[self.state_axes[name]] == 1
                else value for name, value in self.initial.items()}

    def fold(self, per_chunk: np.ndarray) -> np.ndarray:
        """[N, chunks, L] -> [N, L] by --reduce, or [N, chunks * L] with --per-chunk."""
        if self.per_chunk:
            return per_chunk.reshape(len(per_chunk), -1)
        return fold_middle(per_chunk, self.reduce)


class StreamingScorer(OrtScorer):
    """onnxruntime over the chunks of each sequence, the state carried: the verdict that counts."""

    def __init__(self, session: ort.InferenceSession, attacked: TensorInfo, output_name: str, stream: Stream,
                 passthrough: PassThroughInputs) -> None:
        super().__init__(session, attacked.name, attacked.dtype, output_name, passthrough=passthrough)
        self.stream = stream

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = to_input_dtype(np.asarray(x), self.input_dtype)
        if not len(x):
            raise UnsupportedModelError("empty batch")
        chunks = self.stream.count(x.shape[1])
        given = self.passthrough.feeds_for(len(x))
        state = self.stream.first_states(len(x))
        step, context = self.stream.step, self.stream.context
        tail = np.zeros((len(x), context, *x.shape[2:]), dtype=x.dtype)
        scores = []
        for index in range(chunks):
            piece = x[:, index * step:(index + 1) * step]
            if context:  # each call repeats the end of the previous one, zeros before the first
                piece = np.concatenate([tail, piece], axis=1)
                tail = piece[:, step:]
            try:
                first, *carried = self.session.run([self.output_name, *self.stream.outputs],
                                                   {**given, **state, self.input_name: piece})
            except Exception as exc:  # onnxruntime's own exception types
                raise UnsupportedModelError(f"onnxruntime failed to run the model on chunk {index}: "
                                            f"{first_line(exc)}") from None
            state = dict(zip(self.stream.inputs, carried, strict=True))
            scores.append(_chunk_scores(np.asarray(first, dtype=np.float32), len(x), self.output_name,
                                        self.stream.reduce))
        self.raw_rank = 3
        return self.stream.fold(np.stack(scores, axis=1))


def _chunk_scores(scores: np.ndarray, rows: int, output: str, reduce: str) -> np.ndarray:
    """One chunk's scores as [N, L] (a chunk's own frames fold by --reduce)."""
    if scores.ndim < 2 or len(scores) != rows:
        raise UnsupportedModelError(f"output {output!r} gives scores of shape {list(scores.shape)} for a chunk of "
                                    f"{rows} row(s), not [batch, labels]")
    return fold_middle(scores, reduce)


class StreamingGraph(torch.nn.Module):
    """The converted graph (score output and state outputs) run over the chunks, as StreamingScorer does."""

    def __init__(self, graph: torch.nn.Module, order: tuple[str, ...], attacked: str, stream: Stream,
                 passthrough: PassThroughInputs) -> None:
        super().__init__()
        self.graph = graph
        self.order = order
        self.attacked = attacked
        self.stream = stream
        self.passthrough = passthrough

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, step, context = x.shape[0], self.stream.step, self.stream.context
        given = self.passthrough.tensors_for(rows, x.device)
        state = {name: torch.from_numpy(np.ascontiguousarray(value)).to(x.device)
                 for name, value in self.stream.first_states(rows).items()}
        tail = x.new_zeros((rows, context, *x.shape[2:]))
        scores = []
        for index in range(self.stream.count(x.shape[1])):
            piece = x[:, index * step:(index + 1) * step]
            if context:
                piece = torch.cat([tail, piece], dim=1)
                tail = piece[:, step:]
            feeds = {**given, **state, self.attacked: piece}
            first, *carried = self.graph(*(feeds[name] for name in self.order))
            state = dict(zip(self.stream.inputs, carried, strict=True))
            frames = first.reshape(rows, -1, first.shape[-1])
            scores.append(frames.amax(dim=1) if self.stream.reduce == "max" else frames.mean(dim=1))
        stacked = torch.stack(scores, dim=1)
        if self.stream.per_chunk:
            return stacked.reshape(rows, -1)
        return stacked.amax(dim=1) if self.stream.reduce == "max" else stacked.mean(dim=1)


def _state_pairs(info_inputs: Mapping[str, TensorInfo], info_outputs: Mapping[str, TensorInfo],
                 states: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    for output, feeds in states.items():
        if output not in info_outputs:
            raise BadInputError(f"--state {output}={feeds}: the model has no output {output!r} "
                                f"(outputs: {', '.join(info_outputs)})")
        if feeds not in info_inputs:
            raise BadInputError(f"--state {output}={feeds}: the model has no input {feeds!r} "
                                f"(inputs: {', '.join(info_inputs)})")
    return tuple(states.items())


def _initial_states(states: tuple[TensorInfo, ...], axes: Mapping[str, int],
                    given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each state's first value for a batch of one: the value given (--set / --broadcast; its batch dim 1
    or the batch's size), else zeros of the declared shape (its other dims must be fixed)."""
    initial: dict[str, np.ndarray] = {}
    for info in states:
        if info.name in given:
            initial[info.name] = given[info.name]
            continue
        shape = [1 if axis == axes[info.name] else dim for axis, dim in enumerate(info.shape)]
        if not all(isinstance(dim, int) and dim > 0 for dim in shape):
            raise BadInputError(f"state input {info.name!r} has shape {list(info.shape)}: its dims besides the batch "
                                f"are not fixed, so give its first value with --broadcast {info.name}")
        initial[info.name] = np.zeros([int(dim) for dim in shape if isinstance(dim, int)], dtype=info.dtype)
    return initial


def _chunk_length(attacked: TensorInfo, chunk: int | None) -> int:
    if len(attacked.shape) < 2:
        raise UnsupportedModelError(f"input {attacked.name!r} has shape {list(attacked.shape)}: a streaming model "
                                    f"takes [batch, samples, ...] chunks")
    declared = attacked.shape[1]
    if chunk is not None:
        if isinstance(declared, int) and declared > 0 and declared != chunk:
            raise BadInputError(f"--chunk {chunk}: input {attacked.name!r} takes chunks of {declared} samples "
                                f"(shape {list(attacked.shape)})")
        return chunk
    if isinstance(declared, int) and declared > 0:
        return declared
    raise BadInputError(f"input {attacked.name!r} has shape {list(attacked.shape)}: give the samples per call "
                        f"with --chunk N")


def _label_names(names: list[str] | None, labels: int, chunks: int, per_chunk: bool) -> list[str]:
    if names is not None and len(names) != labels:
        raise BadInputError(f"{len(names)} label names for {labels} labels")
    names = names or [str(i) for i in range(labels)]
    return [f"{name}@{chunk}" for chunk in range(chunks) for name in names] if per_chunk else names


def _stream_graph(proto: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The model with exactly `outputs`, in that order (the score first, then the states), normalised as
    the loader's score graph is."""
    model = constants_to_initializers(inline_functions(proto))
    by_name = {value.name: value for value in model.graph.output}
    chosen = [by_name[name] for name in outputs]
    del model.graph.output[:]
    model.graph.output.extend(chosen)
    return fold_constants(model)


def load_streaming(model_file: ModelFile, settings: LoadSettings, device: torch.device,
                   probe: np.ndarray | None, probe_name: str) -> LoadedModel:
    """The LoadedModel of a streaming model (load() with `states`): its input rows are whole sequences."""
    proto, info = model_file.proto, model_file.info
    inputs = {i.name: i for i in info.inputs}
    pairs = _state_pairs(inputs, {o.name: o for o in info.outputs}, settings.states)
    state_inputs = {feeds for _, feeds in pairs}
    constants = {name: value for name, value in settings.constants.items() if name not in state_inputs}
    attacked = choose_attack_input(without(info, state_inputs | set(constants)), settings.attack_input)
    if attacked.name in state_inputs:
        raise BadInputError(f"--state: {attacked.name!r} is the attacked input")
    left = [name for name in inputs if name not in state_inputs | set(constants) | {attacked.name}]
    if left:
        raise BadInputError(f"streaming: input(s) {', '.join(left)} are neither carried state (--state) nor given "
                            f"once (--set / --broadcast)")
    infos = tuple(inputs[name] for _, name in pairs)
    explicit = {name: axis for name, axis in settings.batch_axes.items() if name in state_inputs}
    axes, notes = input_batch_axes(infos, attacked, explicit)
    chunk = _chunk_length(attacked, settings.chunk)
    if not 0 <= settings.context < chunk:
        raise BadInputError(f"--context {settings.context}: must be less than the chunk ({chunk} samples)")
    stream = Stream(chunk, pairs, axes, _initial_states(infos, axes, settings.constants), settings.reduce,
                    settings.per_chunk, settings.context)
    score_info = replace(info, outputs=tuple(o for o in info.outputs if o.name not in stream.outputs))
    score_output = choose_score_output(score_info, settings.output)
    detected = detect_scores_kind(proto, score_output.name)
    kind = detected if settings.scores in ("auto", None) else ScoresKind.parse(
        str(getattr(settings.scores, "value", settings.scores)))
    if kind is ScoresKind.LABELS:
        raise UnsupportedModelError(labels_only_reason(score_output.name))
    try:
        reader = ScoreReader.create(kind, settings.threshold, None, score_output.dtype)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    passthrough = PassThroughInputs((), {}, constants)
    scorer = StreamingScorer(make_session(_serialized(proto), device.type), attacked, score_output.name, stream,
                             passthrough)
    box = (float(settings.box[0]), float(settings.box[1]))
    if probe is None:
        rest = attacked.shape[2:]
        if not all(isinstance(dim, int) and dim > 0 for dim in rest):
            raise BadInputError(f"input {attacked.name!r} has shape {list(attacked.shape)}: pass a probe of real "
                                f"sequences")
        probe = np.random.default_rng(settings.seed).uniform(
            box[0], box[1], (PROBE_SIZE, 2 * stream.step, *(int(d) for d in rest if isinstance(d, int))))
    probe = np.asarray(probe)
    check_rows(probe, box, probe_name)
    if probe.ndim != len(attacked.shape):
        raise BadInputError(f"{probe_name} has rows of shape {list(probe.shape[1:])}: a streaming model's row is one "
                            f"whole sequence [samples, ...] of input {attacked.name!r} {list(attacked.shape)}")
    chunks = stream.count(probe.shape[1])
    probe_scores = scorer(probe)
    base_labels = int(probe_scores.shape[1]) // (chunks if stream.per_chunk else 1)
    labels = _label_names(read_labels(info, settings.labels_file), base_labels, chunks, stream.per_chunk)
    if stream.per_chunk and len(labels) != probe_scores.shape[1]:
        raise BadInputError("--per-chunk: every sequence must have the same number of chunks")
    given = f"; input(s) {', '.join(constants)} given once" if constants else ""
    starts = ", ".join(f"{name} from {'the value given' if name in settings.constants else 'zeros'}"
                       for name in stream.inputs)
    fold = (f"one label per chunk and label ({chunks} chunks)" if stream.per_chunk
            else f"the chunks' scores folded by {stream.reduce} (--reduce)")
    overlap = f" (each repeating the previous call's last {stream.context})" if stream.context else ""
    notes.append(f"streaming: each row of {attacked.name!r} is a whole sequence, run in chunks of {stream.chunk}"
                 f"{overlap} with {', '.join(f'{o} -> {i}' for o, i in pairs)} carried ({starts}){given}; {fold}")
    torch_dtype = torch.from_numpy(np.zeros(0, dtype=attacked.dtype)).dtype if attacked.is_float else torch.float32
    sequence = TensorInfo(attacked.name, attacked.dtype, (attacked.shape[0], "sequence",
                                                          *attacked.shape[2:]))
    loaded = LoadedModel(info=info, input=sequence, score_output=score_output, reader=reader, scorer=scorer,
                         num_labels=len(labels), labels=labels, device=device, torch_dtype=torch_dtype, box=box,
                         notes=notes, passthrough=passthrough, folded=True)
    if not settings.convert:
        return loaded
    if settings.queries_only:
        return _scores_only(loaded, kind, settings)
    if settings.gradients == "estimate":
        return _estimated(loaded, kind, settings, "asked for with --gradients estimate")
    try:
        stream_graph = _stream_graph(proto, [score_output.name, *stream.outputs])
        graph = StreamingGraph(to_torch(stream_graph).to(device), tuple(v.name for v in graph_inputs(stream_graph)),
                               attacked.name, stream, passthrough)
        fidelity = check_fidelity(graph, reader, scorer, probe, settings.tolerance, torch_dtype, device)
    except (ConversionError, FidelityError) as exc:
        if settings.gradients == "torch":
            raise
        return _estimated(loaded, kind, settings, first_line(exc))
    loaded.source = TorchGraphSource(graph, fidelity)
    return loaded
