"""Turn the probability outputs of scikit-learn multi-label exports into one [N, L] tensor.

What skl2onnx (1.20, zipmap disabled) exports for a multi-label y [N, L]:
- OneVsRestClassifier(any binary classifier), and a Pipeline ending in one: `probabilities`
  float [N, L] (the probability of each label's positive class) and `label` int64 [N, L].
  Usable as it is.
- RandomForestClassifier / ExtraTreesClassifier / KNeighborsClassifier fit on a 2-D y (KNN: an int64
  y, with int8 y its export does not load in onnxruntime):
  `probabilities` float [L, N, 2] (label-major: the batch is the SECOND axis; class 1 is the
  positive class) and `label` int64 [N, L].
- MultiOutputClassifier(...): `probabilities` is a sequence of L tensors [N, 2] (fit it on an
  int64 y; with int8 y its label output does not even load in onnxruntime).
`positive_class_output` appends the standard ONNX nodes that make the last two a float [N, L]
output, so that they read like the first.
"""

from __future__ import annotations

import onnx
from onnx import helper

POSITIVE_CLASS = 1


def _output(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    for value in model.graph.output:
        if value.name == name:
            return value
    raise ValueError(f"the model has no output {name!r} (outputs: {', '.join(o.name for o in model.graph.output)})")


def _batch_first(value: onnx.ValueInfoProto) -> bool:
    """[N, L, C] (True) or [L, N, C] (False): the label axis is the one with a fixed size."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 3:
        raise ValueError(f"output {value.name!r} has rank {len(dims)}, expected [N, L, C] or [L, N, C]")
    first_fixed = dims[0].HasField("dim_value")
    second_fixed = dims[1].HasField("dim_value")
    if first_fixed and not second_fixed:
        return False
    if second_fixed and not first_fixed:
        return True
    raise ValueError(f"cannot tell the batch axis of output {value.name!r}: both leading dims are "
                     f"{'fixed' if first_fixed else 'symbolic'}")


def _ensure_opset(model: onnx.ModelProto, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            if entry.version < version:
                raise ValueError(f"the model imports opset {entry.version}; stacking a sequence output "
                                 f"needs {version} (ConcatFromSequence)")
            return


def positive_class_output(model: onnx.ModelProto, output: str = "probabilities", name: str = "label_scores",
                          positive: int = POSITIVE_CLASS) -> onnx.ModelProto:
    """A copy of `model` with a float [N, L] output `name` = class `positive` of each label of `output`.

    `output` is [N, L] (returned unchanged but renamed through an Identity), [L, N, C], [N, L, C]
    or a sequence of L tensors [N, C]. The new output comes first, so that a loader picking the
    first [batch, L] float output picks it.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    value = _output(copy, output)
    graph = copy.graph
    index = helper.make_tensor(f"{name}_class", onnx.TensorProto.INT64, [], [positive])
    nodes: list[onnx.NodeProto] = []
    if value.type.HasField("sequence_type"):
        _ensure_opset(copy, 11)
        nodes.append(helper.make_node("ConcatFromSequence", [output], [f"{name}_stacked"], axis=1, new_axis=1))
        graph.initializer.append(index)
        nodes.append(helper.make_node("Gather", [f"{name}_stacked", index.name], [name], axis=2))
    else:
        rank = len(value.type.tensor_type.shape.dim)
        if rank == 2:
            nodes.append(helper.make_node("Identity", [output], [name]))
        elif _batch_first(value):
            graph.initializer.append(index)
            nodes.append(helper.make_node("Gather", [output, index.name], [name], axis=2))
        else:
            graph.initializer.append(index)
            nodes.append(helper.make_node("Gather", [output, index.name], [f"{name}_by_label"], axis=2))
            nodes.append(helper.make_node("Transpose", [f"{name}_by_label"], [name], perm=[1, 0]))
    graph.node.extend(nodes)
    scores = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", None])
    graph.output.insert(0, scores)
    onnx.checker.check_model(copy)
    return copy
