"""Rewrite an ONNX graph into the form onnx2torch converts, without changing what it computes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper
from onnx.utils import Extractor

from ..model import final_op, graph_inputs

# Constant attributes onnx2torch's KeyError path trips over when weights live in nodes.
_CONSTANT_VALUE_ATTRIBUTES = {"value", "value_float", "value_floats", "value_int", "value_ints"}


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline model-local functions (some exporters emit them; onnx2torch has no converter)."""
    if not model.functions:
        return model
    return onnx.inliner.inline_local_functions(model)


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
    if node is not None and node.op_type in ("Sigmoid", "Softmax"):
        if node.op_type == "Softmax":
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if axis not in (-1, 1):
                return score_output, None
        return node.input[0], node.op_type.lower()
    return score_output, None


def prune_to(model: onnx.ModelProto, tensor_name: str, score_output: str) -> onnx.ModelProto:
    """Keep only what `tensor_name` needs, with it as the single output."""
    model = copy.deepcopy(model)
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output)}
    if tensor_name not in known:
        template = next(o for o in model.graph.output if o.name == score_output)
        value = copy.deepcopy(template)
        value.name = tensor_name
        model.graph.value_info.append(value)
    input_names = [value.name for value in graph_inputs(model)]
    extracted = Extractor(model).extract_model(input_names, [tensor_name])
    # Keep the inputs even if the score path ignores one (the signature stays the model's).
    return extracted


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
