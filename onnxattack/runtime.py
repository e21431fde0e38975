"""The one onnxruntime session factory, and a scorer that copes with a baked-in batch size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from .errors import UnsupportedModelError, first_line
from .passthrough import PassThroughInputs

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
QDQ_NOTE = ("int8 QDQ model: onnxruntime runs it with basic graph optimisations, which keep the ONNX "
            "quantise/dequantise semantics; its fused int8 kernels (the default) round differently, by up "
            "to ~20 output quantisation steps")


def has_qdq(model: onnx.ModelProto) -> bool:
    """QuantizeLinear / DequantizeLinear in the graph (onnxruntime's quantiser, vendors' int8 models)."""
    return any(node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx") for node in model.graph.node)


def needs_one_thread(model: onnx.ModelProto) -> bool:
    """A com.microsoft DynamicQuantizeLSTM in the model: its result depends on the thread count.

    With several intra-op threads onnxruntime splits the batch into row blocks and quantises each
    block's hidden state with its own scale (measured: 0.015-0.026 score differences at batch 3-64
    on 2 threads); with one thread it quantises the whole batch at once, as the torch graph does.
    """
    return any(node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft" for node in model.graph.node)


ONE_THREAD_NOTE = ("onnxruntime runs this model on one thread: its DynamicQuantizeLSTM quantises per block of rows "
                   "when it has several, and its scores would then depend on the batch")


class Session(Protocol):
    """What OrtScorer calls: onnxruntime's InferenceSession, or another runtime's session (runtimes.py)."""

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def get_providers(self) -> list[str]: ...


def session_options(quiet: bool = False, exact_qdq: bool = False, one_thread: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if exact_qdq:  # no fusion of QDQ pairs into integer kernels: the torch graph computes the same
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if one_thread:  # batch-independent dynamic quantisation (needs_one_thread)
        options.intra_op_num_threads = 1
    # Spinning worker threads slow the torch step that follows each call (measured 2.1x).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 4 if quiet else 3  # quiet: a failure is expected and handled
    return options


def providers_for(device: str) -> list[str]:
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(model_bytes: bytes, device: str = "cpu", quiet: bool = False,
                 exact_qdq: bool = False, one_thread: bool = False) -> ort.InferenceSession:
    """A session on the given serialized model; CUDA only when asked for and really used."""
    options = session_options(quiet, exact_qdq, one_thread)
    try:
        return ort.InferenceSession(model_bytes, options, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise UnsupportedModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def to_input_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to the model's own input dtype; integer inputs are rounded and clipped first."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return x > 0.5
    return x.astype(dtype, copy=False)


REDUCTIONS = ("max", "mean")


@dataclass
class FrameLayout:
    """How a score output with more dims than [batch, labels] becomes [batch, labels].

    batch_axis: where the batch is (None: the first dim, unless it is not the batch size and exactly one
    other dim is: then that one, `inferred` is set and the loader says so; time-major CTC outputs are
    [T, N, L]). ctc: per-frame log-softmax over the labels before folding (a CTC recogniser's frame
    logits become, per label, the best log-probability of any frame: "which symbols appear").
    reduce: how the frames fold (max or mean over the middle dims)."""

    reduce: str = "max"
    batch_axis: int | None = None
    ctc: bool = False
    inferred: bool = False

    def batch_first(self, scores: np.ndarray, rows: int) -> np.ndarray:
        axis = self.batch_axis
        if axis is None and scores.ndim > 2 and len(scores) != rows:
            candidates = [a for a, size in enumerate(scores.shape[:-1]) if size == rows]
            if len(candidates) == 1:
                self.batch_axis, self.inferred, axis = candidates[0], True, candidates[0]
        if axis:
            if not -scores.ndim < axis < scores.ndim - 1:
                raise UnsupportedModelError(f"--batch-axis {axis} does not fit scores of shape {list(scores.shape)} "
                                            f"(the last dim is the labels)")
            scores = np.moveaxis(scores, axis, 0)
        return scores

    def fold(self, scores: np.ndarray) -> np.ndarray:
        if self.ctc:
            if scores.ndim < 3:
                raise UnsupportedModelError(f"CTC scores must have a frame dim: got shape {list(scores.shape)}")
            shifted = scores - scores.max(axis=-1, keepdims=True)
            scores = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return fold_middle(scores, self.reduce)


def _pad(rows: np.ndarray, missing: int) -> np.ndarray:
    return np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)])


def fold_middle(scores: np.ndarray, reduce: str) -> np.ndarray:
    """[N, ..., L] -> [N, L]: the label axis is the last; the others fold by max or mean."""
    if scores.ndim <= 2:
        return scores
    axes = tuple(range(1, scores.ndim - 1))
    return scores.max(axis=axes) if reduce == "max" else scores.mean(axis=axes)


class OrtScorer:
    """Scores of one output for a batch, in chunks of the model's fixed batch size if it has one.

    A multi-input model's other inputs come from `passthrough`, the rows bound to the batch. A model
    without a batch dim (`per_sample`: one whole sequence per call) runs row by row. A label output of
    class indices [N] is read as one-hot rows over `classes` (set by the loader)."""

    def __init__(self, session: Session, input_name: str, input_dtype: np.dtype,
                 output_name: str, fixed_batch: int | None = None, layout: FrameLayout | None = None,
                 passthrough: PassThroughInputs | None = None, per_sample: bool = False) -> None:
        self.session = session
        self.input_name = input_name
        self.input_dtype = np.dtype(input_dtype)
        self.output_name = output_name
        self.fixed_batch = fixed_batch
        self.layout = layout or FrameLayout()
        self.passthrough = passthrough or PassThroughInputs()
        self.per_sample = per_sample
        self.raw_rank = 0  # the rank of the output as onnxruntime returns it (set by the first call)
        self.classes: np.ndarray | None = None
        self._unfolded = False

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _run(self, x: np.ndarray, others: dict[str, np.ndarray]) -> np.ndarray:
        feeds = self.passthrough.model_layout(others, self.per_sample)
        feeds[self.input_name] = x[0] if self.per_sample else x  # per_sample: one row, fed without its batch dim
        try:
            (scores,) = self.session.run([self.output_name], feeds)
        except UnsupportedModelError:  # another runtime's session says which one failed
            raise
        except Exception as exc:  # onnxruntime's own exception types
            raise UnsupportedModelError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
        if self.classes is not None:  # class indices [N] -> one-hot [N, classes]
            scores = np.asarray(scores).reshape(-1, 1) == self.classes.reshape(1, -1)
        scores = np.asarray(scores, dtype=np.float32)
        self.raw_rank = scores.ndim
        if self.per_sample:
            scores = scores[None]
        else:
            scores = self.layout.batch_first(scores, len(x))
        if scores.ndim < 2:
            raise UnsupportedModelError(f"output {self.output_name!r} gives scores of shape {list(scores.shape)} for "
                                        f"{len(x)} input row(s), not [batch, labels]")
        if len(scores) != len(x):  # a model with no batch dim, or an ambiguous time-major output
            raise UnsupportedModelError(
                f"output {self.output_name!r} gives scores of shape {list(scores.shape)} for {len(x)} input row(s): "
                f"its first dim is not the batch (scores must be [batch, labels] or [batch, ..., labels]; "
                f"--batch-axis {self.output_name}=AXIS names the batch dim of a time-major output)")
        return scores if self._unfolded else self.layout.fold(scores)

    def frames(self, x: np.ndarray) -> np.ndarray:
        """The scores before their frames fold, batch-first [N, ..., L] (a CTC decoder reads every frame)."""
        self._unfolded = True
        try:
            return self(x)
        finally:
            self._unfolded = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = to_input_dtype(np.asarray(x), self.input_dtype)
        others = self.passthrough.rows_for(len(x))
        if self.per_sample:
            if not len(x):
                raise UnsupportedModelError("empty batch")
            return np.concatenate([self._run(x[i:i + 1], {name: rows[i:i + 1] for name, rows in others.items()})
                                   for i in range(len(x))])
        if self.fixed_batch is None and len(x) == 1:
            # one row runs as two copies: a graph ending with a Squeeze of every size-1 dim (madmom's
            # exports) would drop the batch dim of a single row
            doubled = {name: _pad(rows, 1) for name, rows in others.items()}
            return self._run(_pad(x, 1), doubled)[:1]
        if self.fixed_batch is None:
            return self._run(x, others)
        size = self.fixed_batch
        parts = []
        for start in range(0, len(x), size):
            chunk = x[start:start + size]
            chunk_others = {name: rows[start:start + size] for name, rows in others.items()}
            missing = size - len(chunk)
            if missing:  # pad the last chunk with copies of its last row, then drop them
                chunk = _pad(chunk, missing)
                chunk_others = {name: _pad(rows, missing) for name, rows in chunk_others.items()}
            parts.append(self._run(chunk, chunk_others)[: size - missing])
        if not parts:
            raise UnsupportedModelError("empty batch")
        return np.concatenate(parts)
