"""Read a model file safely and describe it: IO, opsets, producer, labels, score output."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import external_data_helper, numpy_helper

from .errors import BadInputError, UnsupportedModelError, first_line
from .types import ScoresKind

# Ops that pass a tensor through unchanged in value, skipped when looking for the op
# that ends the graph.
_PASS_THROUGH_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
# Inputs with more fixed values than this (batch included) are refused: probing them would exhaust memory.
MAX_INPUT_VALUES = 2**27


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


def _undecodable_text(message: Message, where: str = "model") -> str | None:
    """The first text field that is not UTF-8 (protobuf then hands back bytes, which nothing expects)."""
    for descriptor, value in message.ListFields():
        if descriptor.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        values = value if descriptor.is_repeated else [value]
        for item in values:
            if descriptor.type == FieldDescriptor.TYPE_STRING:
                if not isinstance(item, str):
                    return f"{where}.{descriptor.name}"
            elif (found := _undecodable_text(item, f"{where}.{descriptor.name}")) is not None:
                return found
    return None


# Sub-byte element types, packed (their numpy stand-ins claim a byte each): bits per element.
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits
                for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                                   ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
                if hasattr(onnx.TensorProto, name)}


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes a tensor's raw data must hold: its values times the element size."""
    if any(dim < 0 for dim in tensor.dims):
        raise UnsupportedModelError(f"tensor {tensor.name!r} has a negative dim in its shape {list(tensor.dims)}")
    values = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_BITS:
        return -(-values * _PACKED_BITS[tensor.data_type] // 8)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        raise UnsupportedModelError(f"tensor {tensor.name!r} has unknown data type {tensor.data_type}") from None
    if tensor.data_type == onnx.TensorProto.STRING:
        raise UnsupportedModelError(f"tensor {tensor.name!r} holds strings in external data, which ONNX forbids")
    return values * itemsize


def _external_file(tensor: onnx.TensorProto, location: str, root: Path) -> Path:
    """The file a tensor's data lives in: a regular file inside the model's folder once every symlink is
    followed, and not a symlink itself (onnx's checker refuses those too)."""
    relative = Path(location)
    target = (root / relative).resolve()
    if not location or relative.is_absolute() or root not in target.parents:
        raise UnsupportedModelError(f"tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                                    f"model's folder; refusing to read it")
    if (root / relative).is_symlink():
        raise UnsupportedModelError(f"external data {location!r} of tensor {tensor.name!r} is a symbolic link; "
                                    f"copy the file it points to beside the model")
    if not target.exists():
        raise BadInputError(f"external data file {location!r} of tensor {tensor.name!r} is missing")
    if not target.is_file():
        raise UnsupportedModelError(f"external data {location!r} of tensor {tensor.name!r} is not a regular file")
    return target


def _check_external_tensor(tensor: onnx.TensorProto, root: Path) -> None:
    """Location, offset and length of one tensor's external data, before a byte of it is read: the data
    must be exactly the tensor's size and lie inside its file (a missing length reads the rest of the
    file, which a sparse file could make any size)."""
    try:
        info = external_data_helper.ExternalDataInfo(tensor)
    except ValueError:  # an offset or length that is not a number
        raise UnsupportedModelError(f"tensor {tensor.name!r} has unreadable external-data fields") from None
    target = _external_file(tensor, str(info.location), root)
    size = target.stat().st_size
    offset = int(info.offset or 0)
    expected = _tensor_bytes(tensor)
    length = size - offset if info.length is None else int(info.length)
    where = f"external data of tensor {tensor.name!r} ({info.location!r}"
    if offset < 0 or length < 0 or offset + length > size:
        raise UnsupportedModelError(f"{where}, offset {offset}, length {length}) lies outside its "
                                    f"{size}-byte file")
    if length != expected:
        raise UnsupportedModelError(f"{where}) holds {length} bytes; its shape {list(tensor.dims)} and type "
                                    f"need {expected}")


def _check_external_data(model: onnx.ModelProto, folder: Path) -> bool:
    """Check every tensor's external data (see _check_external_tensor). True if any tensor has some."""
    root = folder.resolve()
    found = False
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            _check_external_tensor(tensor, root)
            found = True
    return found


def _check_tensor(tensor: onnx.TensorProto, most_values: int) -> None:
    """Every constant tensor must hold exactly the values its type and shape claim."""
    dims = list(tensor.dims)
    try:
        onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        raise UnsupportedModelError(f"tensor {tensor.name!r} has unknown data type {tensor.data_type}") from None
    if any(dim < 0 for dim in dims):
        raise UnsupportedModelError(f"tensor {tensor.name!r} has a negative dim in its shape {dims}")
    if math.prod(dims) > most_values:  # before reading it: the claim alone could exhaust memory
        raise UnsupportedModelError(f"tensor {tensor.name!r} claims shape {dims}, more values than the model holds")
    try:
        numpy_helper.to_array(tensor)
    except Exception as exc:  # numpy and onnx raise ValueError, TypeError, KeyError, ... here
        raise UnsupportedModelError(f"tensor {tensor.name!r} of shape {dims} cannot be read: "
                                    f"{first_line(exc)}") from None


def _dynamic_dim(position: int, value: int) -> bool:
    """-1 anywhere, or 0 as the batch dim, written where a symbolic name was meant."""
    return value == -1 or (position == 0 and value == 0)


def _check_shapes(model: onnx.ModelProto) -> None:
    """Dims of -1 (and a batch dim of 0) are how some exporters (PaddlePaddle) write a dynamic dim; any other
    negative dim, an input that is empty, or one too large to probe is refused."""
    for kind, values in (("input", graph_inputs(model)), ("output", model.graph.output)):
        for value in values:
            fixed = [dim.dim_value for position, dim in enumerate(value.type.tensor_type.shape.dim)
                     if dim.HasField("dim_value") and not _dynamic_dim(position, dim.dim_value)]
            if any(dim < 0 for dim in fixed):
                raise UnsupportedModelError(f"{kind} {value.name!r} has a negative dim: {fixed}")
            if kind == "input" and 0 in fixed:
                raise UnsupportedModelError(f"input {value.name!r} has a dim of 0 (shape {fixed}): it holds no values")
            if kind == "input" and math.prod(fixed) > MAX_INPUT_VALUES:
                raise UnsupportedModelError(f"input {value.name!r} has fixed dims {fixed}: over {MAX_INPUT_VALUES} "
                                            f"values per batch, too large to attack")


def _check_function_calls(model: onnx.ModelProto) -> None:
    """Model-local functions: called with no more inputs and outputs than they declare, and not recursive.

    The checker lets both pass; onnx's inliner then fails with its own exception types.
    """
    functions = {(f.domain, f.name): f for f in model.functions}
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        function = functions.get((node.domain, node.op_type))
        if function is not None and (len(node.input) > len(function.input)
                                     or len(node.output) > len(function.output)):
            raise UnsupportedModelError(
                f"node {node.name or node.op_type!r} calls function {node.op_type!r} with {len(node.input)} "
                f"inputs and {len(node.output)} outputs; it declares {len(function.input)} and "
                f"{len(function.output)}")
    calls = {key: {(n.domain, n.op_type) for n in f.node} & functions.keys() for key, f in functions.items()}
    finished: set[tuple[str, str]] = set()

    def visit(key: tuple[str, str], path: tuple[tuple[str, str], ...]) -> None:
        if key in path:
            cycle = " -> ".join(name for _, name in (*path[path.index(key):], key))
            raise UnsupportedModelError(f"model-local functions call each other in a cycle: {cycle}")
        if key not in finished:
            for callee in sorted(calls[key]):
                visit(callee, (*path, key))
            finished.add(key)

    for key in sorted(functions):
        visit(key, ())


@dataclass(frozen=True)
class ModelFile:
    """A model file read, checked and hashed once: what every later step of a command uses."""

    proto: onnx.ModelProto
    info: ModelInfo


def open_model(path: str | os.PathLike) -> ModelFile:
    """Read the file once (its bytes are hashed and parsed from memory), check it, describe it."""
    data = _read_bytes(Path(path))
    proto = read_model(path, data)
    return ModelFile(proto, describe(proto, path, sha256=hashlib.sha256(data).hexdigest()))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise BadInputError(f"model file not found: {path}")
    if not path.is_file():
        raise BadInputError(f"model path is not a file: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read the model file {path}: {exc.strerror or exc}") from None


def read_model(path: str | os.PathLike, data: bytes | None = None) -> onnx.ModelProto:
    """Load and check an ONNX file (from `data`, its bytes, when the caller has read them already).
    Raises BadInputError / UnsupportedModelError with one line."""
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError, RuntimeError, OSError, ... depending on the damage
        raise BadInputError(f"{path} is not a readable ONNX model (truncated or another format): "
                            f"{first_line(exc)}") from None
    if (field_name := _undecodable_text(model)) is not None:
        raise BadInputError(f"{path} is not a readable ONNX model: {field_name} is not UTF-8 text")
    if not model.graph.node or not model.graph.output:
        raise BadInputError(f"{path} is not an ONNX model (no graph nodes or outputs found)")
    try:
        has_external_data = _check_external_data(model, path.parent)
    except (BadInputError, UnsupportedModelError):
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: unreadable external-data fields: {first_line(exc)}") from None
    try:  # with external data by path (it is then found beside the model); otherwise from memory
        onnx.checker.check_model(str(path) if has_external_data else model)
    except Exception as exc:  # ValidationError mostly; also UnicodeDecodeError, ValueError from its C++ side
        raise UnsupportedModelError(f"{path} fails the ONNX checker: {first_line(exc)}") from None
    if has_external_data:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise UnsupportedModelError(f"{path}: cannot read its external data: {first_line(exc)}") from None
    most_values = 8 * max(path.stat().st_size, model.ByteSize())  # 8: above the densest packing (4 to a byte)
    for tensor in external_data_helper._get_all_tensors(model):
        _check_tensor(tensor, most_values)
    _check_shapes(model)
    _check_function_calls(model)
    return model


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return TensorInfo(value.name, np.dtype(object), ())
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, ValueError, TypeError):  # UNDEFINED or a type this onnx does not know
        dtype = np.dtype(object)
    dims: list[int | str | None] = []
    for position, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and _dynamic_dim(position, int(dim.dim_value)):
            dims.append(None)
        elif dim.HasField("dim_value"):
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


def describe(model: onnx.ModelProto, path: str | os.PathLike, sha256: str | None = None) -> ModelInfo:
    path = Path(path)
    opsets = {(imp.domain or "ai.onnx"): int(imp.version) for imp in model.opset_import}
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ModelInfo(
        path=path,
        sha256=sha256 or _file_sha256(path),
        inputs=tuple(_tensor_info(v) for v in graph_inputs(model)),
        outputs=tuple(_tensor_info(v) for v in model.graph.output),
        opsets=opsets,
        producer=producer or "unknown",
        ir_version=int(model.ir_version),
        metadata={prop.key: prop.value for prop in model.metadata_props},
    )


def choose_score_output(info: ModelInfo, name: str | None = None) -> TensorInfo:
    """The output that holds the label scores: named by the user, else the first [batch, L] float, else the
    first [batch, ..., L] float (frame-level taggers: the middle dims are folded by --reduce), else the only
    floating output whatever the dims it declares, else (no floating output at all) the first label output
    (integers or booleans: read as labels, which only a label-only method attacks)."""
    if name is not None:
        for output in info.outputs:
            if output.name == name:
                if not (output.is_float or is_label_output(output)):
                    raise BadInputError(f"output {name!r} is {output.dtype}, neither scores nor labels")
                return output
        names = ", ".join(o.name for o in info.outputs)
        raise BadInputError(f"model has no output named {name!r} (outputs: {names})")
    for rank_ok in (lambda rank: rank == 2, lambda rank: rank > 2):  # [N, L] first, then [N, ..., L]
        for output in info.outputs:
            if output.is_float and rank_ok(len(output.shape)):
                return output
    floats = [output for output in info.outputs if output.is_float]
    if len(floats) == 1:  # declared with too few dims (madmom's exporter writes [T, 12] as [d0]): the
        return floats[0]  # probe's real scores decide, as for every output
    labels = [output for output in info.outputs if is_label_output(output)]
    if not floats and labels:  # labels only (skl2onnx's `label`): a label-only method can attack it
        return labels[0]
    described = ", ".join(f"{o.name} {o.dtype} {list(o.shape)}" for o in info.outputs)
    raise UnsupportedModelError(
        f"no floating output shaped [batch, labels] or [batch, ..., labels] (outputs: {described}); "
        f"name one with --output"
    )


def is_label_output(tensor: TensorInfo) -> bool:
    """An output of labels, not scores: integers or booleans ([N] class indices or [N, L] 0/1)."""
    return bool(np.issubdtype(tensor.dtype, np.integer) or tensor.dtype == np.bool_)


def label_classes(model: onnx.ModelProto, output_name: str) -> np.ndarray | None:
    """The class labels of the ai.onnx.ml classifier whose label output (its first) makes `output_name`
    (through value-preserving ops): index i of a one-hot row stands for classes[i]. None if there is none
    or its classes are strings."""
    node, name = _final_op_in(model.graph, output_name)
    if node is None or node.domain != _ML_DOMAIN:
        return None
    if node.op_type == "ArrayFeatureExtractor":  # classes[argmax] (skl2onnx's MLP, linear models)
        constants = {init.name: init for init in model.graph.initializer}
        table = constants.get(node.input[0])
        array = numpy_helper.to_array(table) if table is not None else None
        return array.astype(np.int64).reshape(-1) if array is not None and array.dtype.kind in "iu" else None
    if not node.op_type.endswith("Classifier") or node.output[0] != name:
        return None
    ints = next((list(a.ints) for a in node.attribute if a.name == "classlabels_int64s"), None)
    return np.asarray(ints, dtype=np.int64) if ints else None


def _perturbable(tensor: TensorInfo) -> bool:
    """Floating inputs, and uint8 pixels (attacked on their float relaxation, rounded back on output)."""
    return tensor.is_float or tensor.dtype == np.uint8


def _foreign_float(dtype: np.dtype) -> bool:
    """bfloat16 and the float8 / float4 types: floating in ONNX, but ml_dtypes records to numpy."""
    return dtype.kind != "f" and (dtype.name == "bfloat16" or dtype.name.startswith("float"))


def choose_attack_input(info: ModelInfo, name: str | None = None, tokens: bool = False) -> TensorInfo:
    """The input the attack perturbs: named by the user, else the only floating (or uint8 pixel) input.
    Other integer inputs (token ids, byte values, category codes) cannot be perturbed by small steps
    along a gradient; a discrete method (`tokens`: ml-hotflip) takes an integer input instead."""
    if not info.inputs:
        raise UnsupportedModelError("the model has no inputs: there is nothing to perturb")
    if tokens:
        return _token_input(info, name)
    if name is not None:
        chosen = next((i for i in info.inputs if i.name == name), None)
        if chosen is None:
            raise BadInputError(f"model has no input named {name!r} (inputs: {', '.join(i.name for i in info.inputs)})")
    else:
        candidates = [i for i in info.inputs if _perturbable(i)]
        if len(candidates) > 1:
            raise BadInputError(f"the model has {len(candidates)} inputs that could be perturbed "
                                f"({', '.join(i.name for i in candidates)}); choose one with --attack-input NAME")
        chosen = candidates[0] if candidates else info.inputs[0]
    if _foreign_float(chosen.dtype):
        raise UnsupportedModelError(
            f"input {chosen.name!r} is {chosen.dtype}: onnxruntime's Python API takes no {chosen.dtype} arrays, "
            f"so onnxattack cannot feed it; export the model with a float16 or float32 input")
    if not _perturbable(chosen):
        described = ", ".join(f"{i.name} {i.dtype}" for i in info.inputs)
        raise UnsupportedModelError(
            f"input {chosen.name!r} is {chosen.dtype}: integer inputs (token ids, byte values, category codes) have "
            f"no gradient and no small perturbation; onnxattack perturbs floating inputs and uint8 pixels, and "
            f"token ids with --method ml-hotflip (inputs: {described})")
    return chosen


def _token_input(info: ModelInfo, name: str | None) -> TensorInfo:
    """The token-id input: named by the user, else the only integer one."""
    integers = [i for i in info.inputs if np.dtype(i.dtype).kind in "iu" and np.dtype(i.dtype).itemsize >= 4]
    if name is None and len(integers) != 1:
        raise BadInputError(f"the model has {len(integers)} integer inputs; name the token ids with "
                            f"--attack-input NAME (inputs: {', '.join(i.name for i in info.inputs)})")
    chosen = integers[0] if name is None else next((i for i in info.inputs if i.name == name), None)
    if chosen is None:
        raise BadInputError(f"model has no input named {name!r} (inputs: {', '.join(i.name for i in info.inputs)})")
    if chosen not in integers:
        raise BadInputError(f"input {chosen.name!r} is {chosen.dtype}: the method attacks token ids "
                            f"(int32 / int64 inputs)")
    return chosen


def final_op(model: onnx.ModelProto, output_name: str) -> onnx.NodeProto | None:
    """The op that produces the output, looking through value-preserving ops (Identity, Reshape, ...)."""
    return _final_op_in(model.graph, output_name)[0]


def _final_op_in(graph: onnx.GraphProto, name: str) -> tuple[onnx.NodeProto | None, str]:
    """final_op within one graph, and the name of the value it ends at."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(name)
    seen: set[int] = set()
    while node is not None and node.op_type in _PASS_THROUGH_OPS and node.domain in ("", "ai.onnx"):
        if not node.input or id(node) in seen:  # malformed: no data input, or a cycle
            return None, name
        seen.add(id(node))
        name = node.input[0]
        node = producers.get(name)
    return node, name


def _if_branch_ends(model: onnx.ModelProto, output_name: str) -> list[onnx.NodeProto | None]:
    """When an If makes the output: the op ending each branch's matching output (a branch may hand on a
    value of the enclosing graph); else []."""
    node, name = _final_op_in(model.graph, output_name)
    if node is None or node.op_type != "If" or node.domain not in ("", "ai.onnx") or name not in node.output:
        return []
    index = list(node.output).index(name)
    ends = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH and len(attribute.g.output) > index:
            end, inner = _final_op_in(attribute.g, attribute.g.output[index].name)
            ends.append(end if end is not None else final_op(model, inner))
    return ends


_ML_DOMAIN = "ai.onnx.ml"
_LABEL_TYPES = {onnx.TensorProto.BOOL, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
                onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
                onnx.TensorProto.UINT64}
_ML_PROBABILITY_TRANSFORMS = {"LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"}


def _ml_classifier_scores(model: onnx.ModelProto, output_name: str, depth: int = 16) -> onnx.NodeProto | None:
    """The ai.onnx.ml classifier whose score output (its second) feeds `output_name` through
    default-domain ops (skl2onnx slices, gathers and concatenates per-label columns), if any."""
    producers = {out: node for node in model.graph.node for out in node.output}
    frontier, seen = [output_name], set()
    for _ in range(depth):
        following = []
        for name in frontier:
            node = producers.get(name)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.domain == _ML_DOMAIN:
                if node.op_type.endswith("Classifier") and len(node.output) > 1 and node.output[1] == name:
                    return node
                continue
            if node.domain in ("", "ai.onnx"):
                following.extend(node.input)
        frontier = following
    return None


def detect_scores_kind(model: onnx.ModelProto, output_name: str) -> ScoresKind:
    """Logits unless the graph ends with Sigmoid (probabilities) or Softmax over the labels (in every
    branch, when an If makes the output), or the
    scores come from an ai.onnx.ml classifier that outputs probabilities (tree ensembles: always;
    linear and SVM classifiers: with a LOGISTIC or SOFTMAX post-transform); labels for an integer or
    boolean output (a label output: no scores at all)."""
    declared = next((o for o in model.graph.output if o.name == output_name), None)
    if declared is not None and declared.type.tensor_type.elem_type in _LABEL_TYPES:
        return ScoresKind.LABELS
    node = final_op(model, output_name)
    classifier = _ml_classifier_scores(model, output_name)
    if classifier is not None:
        transform = next((a.s.decode() for a in classifier.attribute if a.name == "post_transform"), "NONE")
        if classifier.op_type.startswith("TreeEnsemble") or transform in _ML_PROBABILITY_TRANSFORMS:
            return ScoresKind.PROBABILITIES
        return ScoresKind.LOGITS
    ends = _if_branch_ends(model, output_name)  # every branch of an If ending with the same activation
    if ends and all(end is not None and end.domain in ("", "ai.onnx") for end in ends) \
            and len({end.op_type for end in ends if end is not None}) == 1:
        node = ends[0]
    node = _before_output_quantisation(model, node)
    if node is None or node.domain not in ("", "ai.onnx"):
        return ScoresKind.LOGITS
    if node.op_type == "Sigmoid":
        return ScoresKind.PROBABILITIES
    if node.op_type == "Softmax":
        return ScoresKind.SOFTMAX
    return ScoresKind.LOGITS


def _before_output_quantisation(model: onnx.ModelProto, node: onnx.NodeProto | None) -> onnx.NodeProto | None:
    """An int8 QDQ build quantises its output (Sigmoid -> QuantizeLinear -> DequantizeLinear): the op
    before that pair says what the scores are (probabilities rounded to 1/255 steps are still
    probabilities); any other node is returned as it is."""
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or not node.input:
        return node
    quantise, _ = _final_op_in(model.graph, node.input[0])
    if quantise is None or quantise.op_type != "QuantizeLinear" or not quantise.input:
        return node
    before, _ = _final_op_in(model.graph, quantise.input[0])
    return before if before is not None else node


def declared_range(info: ModelInfo) -> tuple[float, float] | None:
    """The input box the model's metadata declares (`input_range`: a JSON [lo, hi]), if it holds one."""
    raw = info.metadata.get("input_range")
    try:
        low, high = (float(value) for value in json.loads(raw)) if raw else (None, None)
    except (TypeError, ValueError):
        return None
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
        return None
    return low, high


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
