"""If: control flow whose branches are whole subgraphs.

- If-1/11/13/16/19/21/23/24/25: the condition (a tensor of exactly one element, as onnxruntime
  demands) picks then_branch or else_branch at run time. Each branch is converted like a model of
  its own, with the enclosing model's opsets (`_common.model_context`): the enclosing graph's
  initializers it reads become its initializers, the other values it reads from the enclosing
  scope (graph inputs, node outputs) become its inputs. Gradients flow through the branch taken;
  the condition has none (a torch legacy export of Python control flow on a tensor, e.g.
  openWakeWord's "run the verifier when p >= 0.5").
"""

from __future__ import annotations

import copy

import onnx
import torch
from onnx import helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from ._common import mapping, model_context, register, subgraph_free_names


def _branch_model(branch: onnx.GraphProto, graph: OnnxGraph, label: str) -> tuple[onnx.ModelProto, list[str]]:
    """A standalone model of one branch, and the enclosing-scope values it takes as inputs, in order."""
    context = model_context()
    if context is None:
        raise NotImplementedError("If: the enclosing model's opsets are unknown (convert through "
                                  "onnxattack.bridge.convert.to_torch)")
    opsets, ir_version = context
    free = subgraph_free_names(branch)
    constants = [name for name in free if name in graph.initializers]
    captured = [name for name in free if name not in graph.initializers]
    body = copy.deepcopy(branch)
    del body.input[:]
    for name in captured:
        known = graph.value_info.get(name)
        body.input.append(copy.deepcopy(known) if known is not None and known.type.HasField("tensor_type")
                          else helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None))
    body.initializer.extend(copy.deepcopy(graph.initializers[name].proto) for name in constants)
    # Every branch output gets its own Identity: onnx2torch returns a graph output made by a node with
    # several outputs as the whole tuple, and cannot return an input or an initializer directly.
    taken = {value for node in body.node for value in node.output} | {value.name for value in body.input}
    outputs = []
    for index, value in enumerate(body.output):
        name = f"onnxattack_{label}_output_{index}"
        while name in taken:
            name += "_"
        taken.add(name)
        body.node.append(helper.make_node("Identity", [value.name], [name]))
        renamed = copy.deepcopy(value)
        renamed.name = name
        outputs.append(renamed)
    del body.output[:]
    body.output.extend(outputs)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid(domain, version)
                                                   for domain, version in opsets.items()])
    model.ir_version = ir_version
    return model, captured


class If(nn.Module, OnnxToTorchModule):
    def __init__(self, then_branch: nn.Module, else_branch: nn.Module, then_inputs: list[int],
                 else_inputs: list[int], outputs: int) -> None:
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch
        self.then_inputs = then_inputs
        self.else_inputs = else_inputs
        self.outputs = outputs

    def forward(self, condition: torch.Tensor, *values: torch.Tensor):
        if condition.numel() != 1:
            raise ValueError(f"If needs a condition of one element, got one of shape {list(condition.shape)}")
        if bool(condition.reshape(-1)[0]):
            branch, chosen = self.then_branch, self.then_inputs
        else:
            branch, chosen = self.else_branch, self.else_inputs
        result = branch(*(values[index] for index in chosen))
        results = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if len(results) != self.outputs:
            raise ValueError(f"If branch gave {len(results)} outputs, the node has {self.outputs}")
        return results[0] if self.outputs == 1 else results


@register("If", [1, 11, 13, 16, 19, 21, 23, 24, 25])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    from ..convert import to_torch  # the branches convert the way the enclosing graph does

    branches = {attribute.name: attribute.g for attribute in node.proto.attribute}
    then_model, then_captured = _branch_model(branches["then_branch"], graph, "then")
    else_model, else_captured = _branch_model(branches["else_branch"], graph, "else")
    if len(then_model.graph.output) != len(node.output_values) or \
            len(else_model.graph.output) != len(node.output_values):
        raise NotImplementedError(f"If with {len(node.output_values)} outputs and branches of "
                                  f"{len(then_model.graph.output)} and {len(else_model.graph.output)}")
    captured = list(dict.fromkeys(then_captured + else_captured))
    module = If(to_torch(then_model), to_torch(else_model), [captured.index(name) for name in then_captured],
                [captured.index(name) for name in else_captured], len(node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping([node.input_values[0], *captured],
                                                                             node))
