"""Read a model file safely and describe it: IO, opsets, producer, labels, score output."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import BadInputError, UnsupportedModelError
from .types import ScoresKind

# Ops that pass a tensor through unchanged in value, skipped when looking for the op
# that ends the graph.
_PASS_THROUGH_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def is_float(self) -> bool:
        return np.issubdtype(self.dtype, np.floating)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": str(self.dtype), "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    opsets: dict[str, int]
    producer: str
    ir_version: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_external_data_paths(model: onnx.ModelProto, folder: Path) -> bool:
    """Refuse external-data locations that leave the model's folder. True if any exist."""
    found = False
    root = folder.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        found = True
        info = external_data_helper.ExternalDataInfo(tensor)
        location = Path(info.location)
        target = (root / location).resolve()
        if location.is_absolute() or root not in target.parents:
            raise UnsupportedModelError(
                f"tensor {tensor.name!r} keeps its data at {info.location!r}, outside the "
                f"model's folder; refusing to read it"
            )
        if not target.is_file():
            raise BadInputError(f"external data file {info.location!r} of tensor {tensor.name!r} is missing")
    return found


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX file. Raises BadInputError / UnsupportedModelError with one line."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"model file not found: {path}")
    if not path.is_file():
        raise BadInputError(f"model path is not a file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not a readable ONNX model (truncated or another format): {exc}") from None
    if not model.graph.node or not model.graph.output:
        raise BadInputError(f"{path} is not an ONNX model (no graph nodes or outputs found)")
    if _check_external_data_paths(model, path.parent):
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise UnsupportedModelError(f"{path} fails the ONNX checker: {first_line}") from None
    return model


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return TensorInfo(value.name, np.dtype(object), ())
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorInfo(value.name, dtype, tuple(dims))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def describe(model: onnx.ModelProto, path: str | os.PathLike) -> ModelInfo:
    path = Path(path)
    opsets = {(imp.domain or "ai.onnx"): int(imp.version) for imp in model.opset_import}
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ModelInfo(
        path=path,
        sha256=_file_sha256(path),
        inputs=tuple(_tensor_info(v) for v in graph_inputs(model)),
        outputs=tuple(_tensor_info(v) for v in model.graph.output),
        opsets=opsets,
        producer=producer or "unknown",
        ir_version=int(model.ir_version),
        metadata={prop.key: prop.value for prop in model.metadata_props},
    )


def choose_score_output(info: ModelInfo, name: str | None = None) -> TensorInfo:
    """The output that holds the label scores: named by the user, else the first [batch, L] float."""
    if name is not None:
        for output in info.outputs:
            if output.name == name:
                if not output.is_float:
                    raise BadInputError(f"output {name!r} is {output.dtype}, not a floating score tensor")
                return output
        names = ", ".join(o.name for o in info.outputs)
        raise BadInputError(f"model has no output named {name!r} (outputs: {names})")
    for output in info.outputs:
        if output.is_float and len(output.shape) == 2:
            return output
    described = ", ".join(f"{o.name} {o.dtype} {list(o.shape)}" for o in info.outputs)
    raise UnsupportedModelError(
        f"no floating output shaped [batch, labels] (outputs: {described}); name one with --output"
    )


def final_op(model: onnx.ModelProto, output_name: str) -> onnx.NodeProto | None:
    """The op that produces the output, looking through value-preserving ops (Identity, Reshape, ...)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(output_name)
    while node is not None and node.op_type in _PASS_THROUGH_OPS:
        node = producers.get(node.input[0])
    return node


def detect_scores_kind(model: onnx.ModelProto, output_name: str) -> ScoresKind:
    """Logits unless the graph ends with Sigmoid (probabilities) or Softmax over the labels."""
    node = final_op(model, output_name)
    if node is None:
        return ScoresKind.LOGITS
    if node.op_type == "Sigmoid":
        return ScoresKind.PROBABILITIES
    if node.op_type == "Softmax":
        return ScoresKind.SOFTMAX
    return ScoresKind.LOGITS


def read_labels(info: ModelInfo, labels_file: str | os.PathLike | None = None) -> list[str] | None:
    """Label names from a file the user passes (JSON list or one per line), else metadata `labels`."""
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise BadInputError(f"labels file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"labels file {path} is not a JSON list: {exc}") from None
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        return [str(label) for label in labels]
    raw = info.metadata.get("labels")
    if raw is None:
        return None
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(labels, list):
        return None
    return [str(label) for label in labels]
