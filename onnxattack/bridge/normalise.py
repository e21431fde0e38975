"""Rewrite an ONNX graph into the form onnx2torch converts, without changing what it computes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError, first_line
from ..model import final_op, graph_inputs
from ..runtime import session_options
from .converters._common import node_reads

# Constant attributes onnx2torch's KeyError path trips over when weights live in nodes.
_CONSTANT_VALUE_ATTRIBUTES = {"value", "value_float", "value_floats", "value_int", "value_ints"}


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline model-local functions (some exporters emit them; onnx2torch has no converter)."""
    if not model.functions:
        return model
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # onnx raises RuntimeError, ValidationError, ... on malformed functions
        raise UnsupportedModelError(f"model-local functions cannot be inlined: {first_line(exc)}") from None


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move Constant-node values into initializers (PaddlePaddle and some tf2onnx exports)."""
    model = copy.deepcopy(model)
    graph = model.graph
    kept_nodes = []
    for node in graph.node:
        attribute = node.attribute[0] if len(node.attribute) == 1 else None
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or attribute is None \
                or attribute.name not in _CONSTANT_VALUE_ATTRIBUTES:
            kept_nodes.append(node)
            continue
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            tensor = copy.deepcopy(value)
        else:
            dtype = "float32" if "float" in attribute.name else "int64"
            tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        kept_nodes.append(None)
    del graph.node[:]
    graph.node.extend(node for node in kept_nodes if node is not None)
    return model


def drop_reshape_allowzero(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reshape allowzero=1 -> 0 (onnx2torch refuses it before Reshape-19).

    The two differ only where the shape holds a 0: a literal 0 in a constant shape (kept
    as is, so conversion still names it) or a computed 0, which only an empty tensor yields.
    """
    model = copy.deepcopy(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attribute in node.attribute:
            if attribute.name == "allowzero" and attribute.i == 1:
                shape = constants.get(node.input[1])
                if shape is None or not np.any(shape == 0):
                    attribute.i = 0
    return model


def attack_tensor(model: onnx.ModelProto, score_output: str, cut_activation: bool) -> tuple[str, str | None]:
    """The tensor attacks differentiate, and the activation that maps it to the scores.

    When the graph ends with Sigmoid or Softmax (and the caller asks), the logits that feed it
    are attacked: decisions are the same, and saturated probabilities have no gradient.
    """
    if not cut_activation:
        return score_output, None
    node = final_op(model, score_output)
    if node is not None and node.op_type in ("Sigmoid", "Softmax") and node.domain in ("", "ai.onnx"):
        if node.op_type == "Softmax":
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if axis not in (-1, 1):
                return score_output, None
        return node.input[0], node.op_type.lower()
    return score_output, None


def prune_to(model: onnx.ModelProto, tensor_name: str, score_output: str) -> onnx.ModelProto:
    """Keep only what `tensor_name` needs, with it as the single output.

    What a node needs includes the values its subgraphs read from the enclosing graph (an If
    branch's weights, say), which onnx.utils.Extractor does not follow.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    known = {v.name for v in list(graph.value_info) + list(graph.output)}
    if tensor_name not in known:
        template = next(o for o in graph.output if o.name == score_output)
        value = copy.deepcopy(template)
        value.name = tensor_name
        graph.value_info.append(value)
    output = copy.deepcopy(next(v for v in list(graph.output) + list(graph.value_info) if v.name == tensor_name))
    producers = {name: index for index, node in enumerate(graph.node) for name in node.output}
    kept: set[int] = set()
    pending = [tensor_name]
    while pending:
        index = producers.get(pending.pop())
        if index is not None and index not in kept:
            kept.add(index)
            pending.extend(node_reads(graph.node[index]))
    used = {tensor_name} | {name for index in kept for name in [*node_reads(graph.node[index]),
                                                                *graph.node[index].output]}
    initializer_names = {init.name for init in graph.initializer}

    def keep_only(field, wanted) -> None:  # in place: big initializers are not copied again
        for index in reversed(range(len(field))):
            if not wanted(index, field[index]):
                del field[index]

    keep_only(graph.node, lambda index, _: index in kept)  # the graph's order stays: a topological one
    # Keep the inputs even if the score path ignores one (the signature stays the model's).
    keep_only(graph.input, lambda _, value: value.name not in initializer_names)
    keep_only(graph.initializer, lambda _, tensor: tensor.name in used)
    keep_only(graph.sparse_initializer, lambda _, tensor: tensor.values.name in used)
    keep_only(graph.value_info, lambda _, value: value.name in used and value.name != tensor_name)
    del graph.output[:]
    graph.output.append(output)
    return model


def symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose inputs and outputs have a symbolic first dim; None if nothing was fixed."""
    changed = False
    model = copy.deepcopy(model)
    for value in list(graph_inputs(model)) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
            changed = True
    if not changed:
        return None
    del model.graph.value_info[:]  # stale intermediate shapes would pin the batch again
    return model


def split_multi_output_results(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph outputs made by a node with several outputs get their own Identity node.

    onnx2torch returns such a node's whole output tuple as the graph output (e.g. all of an
    LSTM's Y, Y_h, Y_c when only Y_h is the score); through an Identity it returns just the one.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    wanted = [o.name for o in model.graph.output
              if o.name in producers and len(producers[o.name].output) > 1]
    if not wanted:
        return model
    model = copy.deepcopy(model)
    taken = {name for node in model.graph.node for name in node.output}
    for name in wanted:
        inner = name + "__onnxattack"
        while inner in taken:
            inner += "_"
        taken.add(inner)
        for node in model.graph.node:
            node.input[:] = [inner if value == name else value for value in node.input]
            node.output[:] = [inner if value == name else value for value in node.output]
        model.graph.node.append(helper.make_node("Identity", [inner], [name]))
    return model


def fold_constant_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """DequantizeLinear of constant inputs (QDQ models' int8 weights, int32 biases) -> float initializers.

    onnx2torch's Conv, Gemm, ... need their weights as initializers, not computed. The value is
    what onnxruntime computes: float32(int32(q) - int32(zero_point)) * scale, per tensor or per axis.
    """
    constants = {init.name: init for init in model.graph.initializer}
    foldable = [node for node in model.graph.node
                if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx")
                and all(name in constants for name in node.input if name)
                and not any(a.name == "block_size" and a.i for a in node.attribute)]
    if not foldable:
        return model
    model = copy.deepcopy(model)
    folded_outputs = set()
    for node in foldable:
        q = numpy_helper.to_array(constants[node.input[0]])
        scale = numpy_helper.to_array(constants[node.input[1]])
        if q.dtype.kind not in "iu" or scale.dtype.kind != "f":
            continue
        zero = numpy_helper.to_array(constants[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = scale.size
        values = q.astype(np.int64)
        if zero is not None:
            values = values - zero.astype(np.int64).reshape(shape if zero.size > 1 else ())
        result = values.astype(scale.dtype) * scale.reshape(shape if scale.size > 1 else ())
        model.graph.initializer.append(numpy_helper.from_array(result.astype(scale.dtype), node.output[0]))
        folded_outputs.add(node.output[0])
    kept = [node for node in model.graph.node
            if not (node.op_type == "DequantizeLinear" and node.output[0] in folded_outputs)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def explicit_squeeze_axes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Squeeze with no axes of a [batch, fixed dims...] tensor -> Squeeze of the fixed dims of size 1
    (Identity when none).

    A Squeeze with no axes drops every dim of size 1, the batch dim too when a batch has one row
    (madmom's exports end with one: [T, 12] becomes [12] for a single frame). Rewritten only where
    shape inference knows every dim but the first, which is symbolic: the two then differ only for
    a batch of one row, where the converted graph keeps its batch dim.
    """
    candidates = [node for node in model.graph.node if node.op_type == "Squeeze" and node.domain in ("", "ai.onnx")
                  and len([name for name in node.input if name]) == 1
                  and not any(attribute.name == "axes" for attribute in node.attribute)]
    if not candidates:
        return model
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only a help here
        return model
    shapes = {value.name: value.type.tensor_type.shape for value in
              [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
              if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")}
    opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 1)
    model = copy.deepcopy(model)
    taken = {name for node in model.graph.node for name in node.output} \
        | {init.name for init in model.graph.initializer}
    wanted = {node.output[0] for node in candidates}
    for node in model.graph.node:
        if node.op_type != "Squeeze" or not node.output or node.output[0] not in wanted:
            continue
        shape = shapes.get(node.input[0])
        dims = list(shape.dim) if shape is not None else []
        if not dims or dims[0].HasField("dim_value") or not all(dim.HasField("dim_value") for dim in dims[1:]):
            continue
        axes = [index for index, dim in enumerate(dims) if dim.HasField("dim_value") and dim.dim_value == 1]
        if not axes:
            node.op_type = "Identity"
        elif opset < 13:
            node.attribute.append(helper.make_attribute("axes", axes))
        else:
            name = node.output[0] + "__onnxattack_axes"
            while name in taken:
                name += "_"
            taken.add(name)
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), name))
            node.input.append(name)
    return model


# Never folded: their value is drawn anew on each run.
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _constant_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes (default domain, no subgraph, not random) all of whose inputs are constants, chains included.

    An initializer also listed among the graph's inputs is an overridable default, not a constant.
    """
    overridable = {value.name for value in model.graph.input}
    constant = {init.name for init in model.graph.initializer if init.name not in overridable}
    found = []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if inputs and node.domain in ("", "ai.onnx") and node.op_type not in _RANDOM_OPS \
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute) \
                and all(name in constant for name in inputs):
            found.append(node)
            constant.update(name for name in node.output if name)
    return found


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes computed from constants alone -> initializers holding onnxruntime's own result.

    Exporters compute weights in the graph: vendors' int8 toolchains fake-quantize them (float
    initializer -> QuantizeLinear -> DequantizeLinear -> Conv), others feed them through Transpose,
    Reshape or Cast. onnx2torch's Conv and friends want initializers. The values come from
    onnxruntime with graph optimisations off (each node as written), so the folded graph computes
    what onnxruntime computes; anything that depends on an input (activations' QDQ pairs) stays.
    Best effort: a constant subgraph onnxruntime cannot run leaves the model as it is.
    """
    nodes = _constant_nodes(model)
    if not nodes:
        return model
    folded = {id(node) for node in nodes}
    produced = [name for node in nodes for name in node.output if name]
    kept = [node for node in model.graph.node if id(node) not in folded]
    needed = {name for node in kept for name in node_reads(node)} | {value.name for value in model.graph.output}
    wanted = [name for name in produced if name in needed]
    if not wanted or any(value.name in produced for value in model.graph.output):
        return model
    tensors = _run_constant_nodes(model, nodes, wanted)
    if tensors is None:
        return model
    model = copy.deepcopy(model)
    del model.graph.node[:]
    model.graph.node.extend(node for node in kept)
    model.graph.initializer.extend(tensors)
    read = {name for node in model.graph.node for name in node_reads(node)} \
        | {value.name for value in model.graph.output}
    _drop_unread_values(model, read, set(produced))
    return model


def _drop_unread_values(model: onnx.ModelProto, read: set[str], gone: set[str]) -> None:
    """In place: the initializers neither `read` nor a graph input, and the value_info of the `gone` values."""
    used = read | {value.name for value in model.graph.input}
    for index in reversed(range(len(model.graph.initializer))):
        if model.graph.initializer[index].name not in used:
            del model.graph.initializer[index]
    for index in reversed(range(len(model.graph.value_info))):
        if model.graph.value_info[index].name in gone:
            del model.graph.value_info[index]


def _run_constant_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                        wanted: list[str]) -> list[onnx.TensorProto] | None:
    """onnxruntime's values of `wanted` as initializers, computed by `nodes` from the model's initializers;
    None if it cannot."""
    reads = {name for node in nodes for name in node.input if name}
    initializers = [init for init in model.graph.initializer if init.name in reads]
    try:
        inferred = onnx.shape_inference.infer_shapes(helper.make_model(
            helper.make_graph(nodes, "constants", [], [], initializers), opset_imports=model.opset_import,
            ir_version=model.ir_version))
        types = {value.name: value.type for value in inferred.graph.value_info}
        outputs = [onnx.ValueInfoProto(name=name, type=types[name]) for name in wanted]
        sub = helper.make_model(helper.make_graph(nodes, "constants", [], outputs, initializers),
                                opset_imports=model.opset_import, ir_version=model.ir_version)
        options = session_options(quiet=True)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(wanted, {})
        if not all(isinstance(value, np.ndarray) for value in values):  # a sequence or a map: not a tensor
            return None
        return [numpy_helper.from_array(value, name) for name, value in zip(wanted, values, strict=True)]
    except Exception:  # an op or type onnxruntime cannot run here: leave the nodes to the converters
        return None


# The initial-state inputs of the recurrent ops (initial_h; LSTM's initial_c too): zeros when left out.
_INITIAL_STATE_INPUTS = {"RNN": (5,), "GRU": (5,), "LSTM": (5, 6)}


# Ops whose output holds only values of their first input (moved, repeated, cut or cast): zeros stay zeros.
_MOVES_VALUES = frozenset({"Identity", "Cast", "Expand", "Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze",
                           "Flatten", "Tile", "Gather"})


def _zero_values(model: onnx.ModelProto) -> set[str]:
    """Names of values that are all zeros whatever their shape: zero initializers, ConstantOfShape of 0 (its
    default when the attribute is absent), and those moved, cut or cast by _MOVES_VALUES (the dynamo
    exporter's Expand of a scalar 0, then a Slice)."""
    # only initializers that could start a zero state are read (not every weight of the model)
    candidates = {node.input[position] for node in model.graph.node
                  for position in _INITIAL_STATE_INPUTS.get(node.op_type, ()) if position < len(node.input)}
    candidates |= {node.input[0] for node in model.graph.node if node.op_type in _MOVES_VALUES and node.input}
    zeros = {init.name for init in model.graph.initializer if init.name in candidates
             and init.data_type != onnx.TensorProto.STRING and not np.any(numpy_helper.to_array(init))}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.op_type == "ConstantOfShape":
            value = next((attribute.t for attribute in node.attribute if attribute.name == "value"), None)
            if value is None or not np.any(numpy_helper.to_array(value)):
                zeros.add(node.output[0])
        elif node.op_type in _MOVES_VALUES and node.input and node.input[0] in zeros:
            zeros.add(node.output[0])
    return zeros


def drop_zero_initial_states(model: onnx.ModelProto) -> onnx.ModelProto:
    """RNN / GRU / LSTM initial states built as zeros in the graph -> left out, which means zeros.

    torch's legacy exporter gives every nn.GRU / nn.LSTM called without a state a Shape -> Gather ->
    Unsqueeze -> Concat -> ConstantOfShape chain making the [directions, batch, hidden] zeros from
    the input's batch size (the dynamo exporter: Shape -> Concat -> Expand -> Slice): nodes run on
    every call for what the op supplies itself. The chain, left without readers, is removed with
    every other node nothing reads.
    """
    if not any(node.op_type in _INITIAL_STATE_INPUTS for node in model.graph.node):
        return model
    fills = _zero_values(model)
    states = [(index, position) for index, node in enumerate(model.graph.node)
              if node.domain in ("", "ai.onnx") for position in _INITIAL_STATE_INPUTS.get(node.op_type, ())
              if position < len(node.input) and node.input[position] in fills]
    if not states:
        return model
    model = copy.deepcopy(model)
    for index, position in states:
        model.graph.node[index].input[position] = ""
    _drop_dead_nodes(model)
    return model


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """In place: nodes none of whose outputs is read (by a node, a subgraph or as a graph output), and then
    the initializers and value_info nothing reads any more."""
    read = {value.name for value in model.graph.output}
    dead: list[int] = []
    for index in reversed(range(len(model.graph.node))):  # a topological order: readers come after what they read
        node = model.graph.node[index]
        if any(name in read for name in node.output if name):
            read.update(node_reads(node))
        else:
            dead.append(index)
    gone = {name for index in dead for name in model.graph.node[index].output}
    for index in dead:  # descending: earlier indices stay valid
        del model.graph.node[index]
    _drop_unread_values(model, read, gone)
