"""Fuzzing the model loader: small base models, seeded mutators, a sandboxed worker and its driver.

Mutant `index` of run `seed` is a pure function of (seed, index, base model bytes), so any case is
reproduced alone with `python -m bench.fuzz --seed S --only INDEX --save DIR`.

The loading runs in ONE worker subprocess (imports are paid once) that prints a JSON line before and
after each mutant. The driver reads them with a per-mutant timeout; a worker that dies (segfault,
abort) or stalls is blamed on the mutant it had started, and a fresh worker goes on after it. The
worker caps its address space (RLIMIT_AS), so an absurd allocation fails instead of eating the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = ("ok", "exit2", "exit3")

# ---------------------------------------------------------------------------------------------
# Base models


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def build_mlp(path: Path) -> None:
    """A tiny torch MLP with a sigmoid head, exported by the TorchScript exporter, labels in metadata."""
    import torch

    class TinyMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    torch.manual_seed(0)
    exported = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyMLP().eval(), (torch.rand(2, 6),), str(exported), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}})
    model = onnx.load(str(exported))
    exported.unlink()
    helper.set_model_props(model, {"labels": json.dumps(["cat", "dog", "car", "sky"])})
    _save(model, path)


def build_sigmoid(path: Path) -> None:
    """One Sigmoid node: the smallest model the loader accepts."""
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_fixed_softmax(path: Path) -> None:
    """Batch size 2 baked into the input and a Reshape constant; a Softmax head."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(np.array([2, 6], dtype=np.int64), "shape"),
                    numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "W"),
                    numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 4])], initializers)
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_ml_linear(path: Path) -> None:
    """An ai.onnx.ml LinearClassifier (the op skl2onnx exports a LogisticRegression to), two outputs."""
    rng = np.random.default_rng(0)
    node = helper.make_node("LinearClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml",
                            coefficients=rng.normal(size=12).round(3).tolist(), intercepts=[0.1, -0.2, 0.3],
                            classlabels_ints=[0, 1, 2], multi_class=0, post_transform="LOGISTIC")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    _save(model, path)


def build_sklearn_lr(path: Path) -> None:
    """A real skl2onnx export of a LogisticRegression (slow imports: only for the long run)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    classifier = LogisticRegression(max_iter=200).fit(x, (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1))
    _save(to_onnx(classifier, x[:1], options={id(classifier): {"zipmap": False}}, target_opset=17), path)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "mlp": build_mlp, "sigmoid": build_sigmoid, "fixed-softmax": build_fixed_softmax,
    "ml-linear": build_ml_linear, "sklearn-lr": build_sklearn_lr,
}
SUITE_MODELS = ("mlp", "sigmoid", "fixed-softmax", "ml-linear")
ALL_MODELS = (*SUITE_MODELS, "sklearn-lr")


def base_models(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Serialized base models, built into `folder` on first use."""
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for name in names:
        path = folder / f"{name}.onnx"
        if not path.is_file():
            BUILDERS[name](path)
        found[name] = path.read_bytes()
    return found


# ---------------------------------------------------------------------------------------------
# Protobuf-level mutators: each changes `model` in place and returns a short description.

INT64_VALUES = (-2**63, -1, 0, 1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1)
INT32_VALUES = (-2**31, -1, 0, 1, 2, 3, 7, 255, 2**31 - 1)
DIMS = (-1, 0, 1, 2, 3, 4, 6, 7, 2**31, 2**40, 2**63 - 1)
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 3.4e38, float("inf"), float("-inf"), float("nan"))
OPS = ("Sigmoid", "Softmax", "LogSoftmax", "Relu", "Identity", "Gemm", "MatMul", "Add", "Reshape", "Flatten",
       "Tanh", "Conv", "If", "Loop", "Scan", "Cast", "Constant", "ConstantOfShape", "Expand", "Tile", "Range",
       "Resize", "NonZero", "TopK", "Unique", "LinearClassifier", "Normalizer", "ZipMap", "Hardmax", "Einsum")
DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "custom.domain", "ai.onnx.preview.training")
NAMES = ("", "x", "input", "scores", "y", "W", "shape", "a,b", "名前", "../up", "\t")


def _tensor_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    graph = model.graph
    return [v for v in [*graph.input, *graph.output, *graph.value_info] if v.type.HasField("tensor_type")]


def _all_names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = {v.name for v in [*graph.input, *graph.output]} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return sorted(names)


def mutate_dim(model: onnx.ModelProto, rng: random.Random) -> str:
    values = _tensor_values(model)
    if not values:
        return "dim:none"
    value = rng.choice(values)
    dims = value.type.tensor_type.shape.dim
    action = rng.choice(["value", "value", "param", "clear", "delete", "add"]) if dims else "add"
    if action == "add":
        dims.add().dim_value = rng.choice(DIMS)
        return f"dim:add:{value.name}"
    position = rng.randrange(len(dims))
    if action == "value":
        dims[position].dim_value = rng.choice(DIMS)
        return f"dim:{value.name}[{position}]={dims[position].dim_value}"
    if action == "param":
        dims[position].dim_param = rng.choice(["N", "batch", "", "-1", "0"])
    elif action == "clear":
        dims[position].Clear()
    else:
        del dims[position]
    return f"dim:{action}:{value.name}[{position}]"


def mutate_dtype(model: onnx.ModelProto, rng: random.Random) -> str:
    values = _tensor_values(model)
    if not values:
        return "dtype:none"
    value = rng.choice(values)
    value.type.tensor_type.elem_type = rng.choice([*range(0, 29), 99, -1])
    return f"dtype:{value.name}={value.type.tensor_type.elem_type}"


def mutate_value_type(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = model.graph
    value = rng.choice([*graph.input, *graph.output])
    action = rng.choice(["sequence", "optional", "map", "clear-type", "clear-shape", "scalar", "sparse"])
    element = onnx.TypeProto()
    element.CopyFrom(value.type)
    if action == "sequence":
        value.type.Clear()
        value.type.sequence_type.elem_type.CopyFrom(element)
    elif action == "optional":
        value.type.Clear()
        value.type.optional_type.elem_type.CopyFrom(element)
    elif action == "map":
        value.type.Clear()
        value.type.map_type.key_type = TensorProto.INT64
        value.type.map_type.value_type.CopyFrom(element)
    elif action == "clear-type":
        value.type.Clear()
    elif action == "clear-shape":
        value.type.tensor_type.ClearField("shape")
    elif action == "scalar":
        del value.type.tensor_type.shape.dim[:]
    else:
        value.type.Clear()
        value.type.sparse_tensor_type.elem_type = TensorProto.FLOAT
    return f"type:{action}:{value.name}"


def mutate_initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    inits = model.graph.initializer
    if not inits:
        return "init:none"
    tensor = rng.choice(inits)
    action = rng.choice(["dtype", "dims-huge", "dims-negative", "dims-add", "dims-clear", "raw-truncate",
                         "raw-double", "raw-clear", "to-float-data", "external", "segment", "string", "poison",
                         "poison"])
    if action == "poison" and tensor.data_type == TensorProto.FLOAT and len(tensor.raw_data) >= 4:
        # NaN, inf or extreme weights of the same size and type: the model stays valid.
        values = np.frombuffer(tensor.raw_data[: len(tensor.raw_data) // 4 * 4], dtype=np.float32).copy()
        for _ in range(rng.randint(1, 3)):
            values[rng.randrange(values.size)] = rng.choice(FLOATS)
        tensor.raw_data = values.tobytes() + tensor.raw_data[values.size * 4:]
    elif action == "dtype":
        tensor.data_type = rng.choice([*range(0, 29), 99])
    elif action == "dims-huge":
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([2**31, 2**40, 2**62]) if tensor.dims else 0
    elif action == "dims-negative":
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([-1, -2**40])
    elif action == "dims-add":
        tensor.dims.append(rng.choice(DIMS))
    elif action == "dims-clear":
        del tensor.dims[:]
    elif action == "raw-truncate":
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
    elif action == "raw-double":
        tensor.raw_data = tensor.raw_data * 2 + b"\x01"
    elif action == "raw-clear":
        tensor.ClearField("raw_data")
    elif action == "to-float-data":
        tensor.float_data.extend(rng.choice(FLOATS) for _ in range(rng.randrange(5)))
    elif action == "external":
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in rng.choice([(("location", "missing.bin"),), (("location", "../outside.bin"),),
                                      (("location", "/etc/hostname"),), (("location", ""),),
                                      (("location", "w.bin"), ("offset", "abc")),
                                      (("location", "."), ("length", "-5")), (("bogus", "1"),), ()]):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    elif action == "segment":
        tensor.segment.begin, tensor.segment.end = rng.choice(INT64_VALUES), rng.choice(INT64_VALUES)
    else:
        tensor.string_data.append(b"\xff\xfe")
    return f"init:{action}:{tensor.name}"


def delete_initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    inits = model.graph.initializer
    if not inits:
        return "del-init:none"
    position = rng.randrange(len(inits))
    name = inits[position].name
    del inits[position]
    return f"del-init:{name}"


def mutate_op(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    if rng.random() < 0.25:
        node.domain = rng.choice(DOMAINS)
        return f"domain:{node.name or node.op_type}={node.domain}"
    node.op_type = rng.choice([*OPS, "", "NoSuchOp", node.op_type.lower(), node.op_type + "\x00"])
    return f"op:{node.op_type}"


def mutate_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    if not node.attribute or rng.random() < 0.3:
        name = rng.choice(["axis", "transB", "alpha", "allowzero", "perm", "to", "value", "bogus"])
        kind = rng.choice(["int", "float", "ints", "string", "tensor"])
        if kind == "int":
            attribute = helper.make_attribute(name, rng.choice(INT64_VALUES))
        elif kind == "float":
            attribute = helper.make_attribute(name, rng.choice(FLOATS))
        elif kind == "ints":
            attribute = helper.make_attribute(name, [rng.choice(INT64_VALUES) for _ in range(rng.randrange(4))],
                                               attr_type=onnx.AttributeProto.INTS)
        elif kind == "string":
            attribute = helper.make_attribute(name, rng.choice(["", "LOGISTIC", "NONE", "é"]))
        else:
            attribute = helper.make_attribute(name, numpy_helper.from_array(np.zeros(rng.choice([0, 1, 3]))))
        node.attribute.append(attribute)
        return f"attr:add:{node.op_type}.{name}:{kind}"
    attribute = rng.choice(node.attribute)
    action = rng.choice(["int", "float", "ints", "floats", "type", "delete", "strings", "rename"])
    if action == "int":
        attribute.i = rng.choice(INT64_VALUES)
    elif action == "float":
        attribute.f = rng.choice(FLOATS)
    elif action == "ints":
        attribute.ints[:] = [rng.choice(INT64_VALUES) for _ in range(rng.randrange(5))]
    elif action == "floats":
        attribute.floats[:] = [rng.choice(FLOATS) for _ in range(rng.randrange(20))]
    elif action == "type":
        attribute.type = rng.choice(sorted(onnx.AttributeProto.AttributeType.values()))
    elif action == "strings":
        attribute.strings[:] = [b"\xff", b"", b"LOGISTIC"][: rng.randrange(4)]
    elif action == "rename":
        attribute.name = rng.choice(["", "axis", "zzz"])
    else:
        node.attribute.remove(attribute)
    return f"attr:{action}:{node.op_type}.{attribute.name}"


def rename_value(model: onnx.ModelProto, rng: random.Random) -> str:
    """Rename one occurrence of a tensor name only, leaving a dangling reference."""
    graph = model.graph
    places: list[tuple[object, int | None]] = [(v, None) for v in [*graph.input, *graph.output, *graph.initializer]]
    for node in graph.node:
        places += [(node.input, i) for i in range(len(node.input))]
        places += [(node.output, i) for i in range(len(node.output))]
    holder, position = rng.choice(places)
    new = rng.choice([*NAMES, *_all_names(model)])
    if position is None:
        holder.name = new  # type: ignore[attr-defined]
    else:
        holder[position] = new  # type: ignore[index]
    return f"rename:{new!r}"


def mutate_outputs(model: onnx.ModelProto, rng: random.Random) -> str:
    outputs = model.graph.output
    action = rng.choice(["drop-one", "drop-all", "add-existing", "add-missing", "duplicate"])
    if action == "drop-one" and outputs:
        del outputs[rng.randrange(len(outputs))]
    elif action == "drop-all":
        del outputs[:]
    elif action == "duplicate" and outputs:
        outputs.append(outputs[rng.randrange(len(outputs))])
    else:
        name = rng.choice(_all_names(model)) if action == "add-existing" else "nowhere"
        shape = rng.choice([[None, 4], ["N", 2], [2, 2, 2], [], None])
        outputs.append(helper.make_tensor_value_info(name, rng.choice([1, 7, 11]), shape))
    return f"outputs:{action}"


def mutate_inputs(model: onnx.ModelProto, rng: random.Random) -> str:
    inputs = model.graph.input
    action = rng.choice(["add-second", "duplicate", "drop", "as-initializer-name", "drop-all"])
    if action == "add-second":
        inputs.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 3]))
    elif action == "duplicate" and inputs:
        inputs.append(inputs[0])
    elif action == "drop" and inputs:
        del inputs[rng.randrange(len(inputs))]
    elif action == "drop-all":
        del inputs[:]
    elif model.graph.initializer:  # an initializer listed as an input (old exporters), or shadowing one
        inputs.append(helper.make_tensor_value_info(rng.choice(model.graph.initializer).name, 1, None))
    return f"inputs:{action}"


def mutate_opset(model: onnx.ModelProto, rng: random.Random) -> str:
    action = rng.choice(["version", "version", "domain", "clear", "duplicate", "add"])
    imports = model.opset_import
    if action == "version" and imports:
        entry = rng.choice(imports)
        entry.version = rng.choice([-2**63, -1, 0, 1, 5, 7, 13, 17, 21, 23, 24, 28, 99, 10**6, 2**62])
        return f"opset:{entry.domain or 'ai.onnx'}={entry.version}"
    if action == "domain" and imports:
        rng.choice(imports).domain = rng.choice(DOMAINS)
    elif action == "clear":
        del imports[:]
    elif action == "duplicate" and imports:
        imports.append(imports[0])
    else:
        imports.append(helper.make_opsetid(rng.choice(DOMAINS), rng.choice([1, 3, 17, 10**6])))
    return f"opset:{action}"


def mutate_ir_version(model: onnx.ModelProto, rng: random.Random) -> str:
    model.ir_version = rng.choice([-1, 0, 1, 2, 3, 4, 7, 9, 10, 11, 12, 13, 99, 2**40])
    return f"ir:{model.ir_version}"


def mutate_nodes(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = model.graph.node
    action = rng.choice(["delete", "duplicate", "reverse", "self-cycle", "empty-input", "extra-input",
                         "drop-inputs", "drop-outputs", "clear-all", "subgraph"])
    node = rng.choice(nodes)
    if action == "delete":
        nodes.remove(node)
    elif action == "duplicate":
        nodes.append(node)
    elif action == "reverse":
        reordered = list(nodes)[::-1]
        del nodes[:]
        nodes.extend(reordered)
    elif action == "self-cycle" and node.output:
        node.input.append(node.output[0])
    elif action == "empty-input":
        node.input.append("")
    elif action == "extra-input":
        node.input.append(rng.choice(_all_names(model)))
    elif action == "drop-inputs":
        del node.input[:]
    elif action == "drop-outputs":
        del node.output[:]
    elif action == "clear-all":
        del nodes[:]
    else:
        branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "branch", [], [])
        node.attribute.append(helper.make_attribute("then_branch", branch))
    return f"nodes:{action}:{node.op_type}"


def mutate_metadata(model: onnx.ModelProto, rng: random.Random) -> str:
    key = rng.choice(["labels", "labels", "top_k"])
    value = rng.choice(['["a"]', '["a", "b", "c", "d"]', json.dumps([str(i) for i in range(5000)]), "{}", "null",
                        "[1, 2, [3]]", "not json", "", '["x\\ny", "b", "c", "d"]', "-3", "1e999", "2", "[]"])
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})
    return f"meta:{key}={value[:20]!r}"


def mutate_functions(model: onnx.ModelProto, rng: random.Random) -> str:
    """A model-local function, used by a node or not (the loader inlines them)."""
    body = [helper.make_node(rng.choice(["Relu", "NoSuchOp", "Sigmoid"]), ["a"], ["b"])]
    if rng.random() < 0.2:  # a function that calls itself
        body = [helper.make_node("Fn", ["a"], ["b"], domain="local.fn")]
    function = helper.make_function("local.fn", "Fn", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local.fn", 1))
    if rng.random() < 0.7:
        node = rng.choice(model.graph.node)
        node.op_type, node.domain = "Fn", "local.fn"
        del node.attribute[:]
    return "functions:add"


PROTO_MUTATORS: dict[str, Callable[[onnx.ModelProto, random.Random], str]] = {
    "dim": mutate_dim, "dtype": mutate_dtype, "type": mutate_value_type, "init": mutate_initializer,
    "del-init": delete_initializer, "op": mutate_op, "attr": mutate_attribute, "rename": rename_value,
    "outputs": mutate_outputs, "inputs": mutate_inputs, "opset": mutate_opset, "ir": mutate_ir_version,
    "nodes": mutate_nodes, "meta": mutate_metadata, "functions": mutate_functions,
}

# ---------------------------------------------------------------------------------------------
# Byte-level mutators

INTERESTING_BYTES = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0x08, 0x0A, 0x12, 0x3A)


def _span(rng: random.Random, size: int, longest: int = 64) -> tuple[int, int]:
    start = rng.randrange(size)
    return start, min(size, start + rng.randint(1, longest))


def flip_bits(data: bytearray, rng: random.Random) -> str:
    count = rng.randint(1, 8)
    for _ in range(count):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    return f"flip:{count}"


def replace_bytes(data: bytearray, rng: random.Random) -> str:
    count = rng.randint(1, 4)
    for _ in range(count):
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
    return f"replace:{count}"


def truncate(data: bytearray, rng: random.Random) -> str:
    keep = rng.randrange(len(data))
    del data[keep:]
    return f"truncate:{keep}"


def insert_bytes(data: bytearray, rng: random.Random) -> str:
    position = rng.randrange(len(data) + 1)
    data[position:position] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 16)))
    return f"insert:{position}"


def duplicate_slice(data: bytearray, rng: random.Random) -> str:
    start, end = _span(rng, len(data))
    position = rng.randrange(len(data) + 1)
    data[position:position] = data[start:end]
    return f"dup:{start}:{end}@{position}"


def swap_chunks(data: bytearray, rng: random.Random) -> str:
    a, b = sorted(rng.sample(range(len(data)), 2)) if len(data) > 1 else (0, 0)
    size = min(rng.randint(1, 32), b - a, len(data) - b)
    if size > 0:
        data[a:a + size], data[b:b + size] = data[b:b + size], data[a:a + size]
    return f"swap:{a}:{b}:{size}"


BYTE_MUTATORS: dict[str, Callable[[bytearray, random.Random], str]] = {
    "flip": flip_bits, "replace": replace_bytes, "truncate": truncate, "insert": insert_bytes,
    "dup": duplicate_slice, "swap": swap_chunks,
}


@dataclass(frozen=True)
class Mutant:
    index: int
    base: str
    recipe: tuple[str, ...]
    data: bytes


def make_mutant(bases: dict[str, bytes], seed: int, index: int) -> Mutant:
    """Mutant `index` of run `seed`: 60% protobuf edits, 30% byte edits, 10% both."""
    rng = random.Random(f"onnxattack-fuzz:{seed}:{index}")
    base = rng.choice(sorted(bases))
    data = bases[base]
    recipe: list[str] = []
    style = rng.random()
    if style < 0.7:
        model = onnx.load_from_string(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            if not model.graph.node:
                break
            recipe.append(PROTO_MUTATORS[rng.choice(sorted(PROTO_MUTATORS))](model, rng))
        data = model.SerializeToString()
    if style >= 0.6:
        buffer = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            if not buffer:
                break
            recipe.append(BYTE_MUTATORS[rng.choice(sorted(BYTE_MUTATORS))](buffer, rng))
        data = bytes(buffer)
    return Mutant(index, base, tuple(recipe), data)


# ---------------------------------------------------------------------------------------------
# The worker: loads each mutant the way the CLI does and reports one JSON line per outcome.


def classify(error: BaseException) -> tuple[str, str]:
    """(outcome, message) of an exception: exit2 / exit3 for a typed one-line error, else failure."""
    from onnxattack.errors import OnnxAttackError

    message = str(error)
    if isinstance(error, OnnxAttackError) and error.exit_code in (2, 3):
        if not message.strip():
            return "failure", "empty message"
        if "\n" in message or "\r" in message:
            return "failure", f"message of several lines: {message[:300]!r}"
        return f"exit{error.exit_code}", message[:300]
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" at {Path(where.filename).name}:{where.lineno} ({where.name})" if where else ""
    return "failure", f"{message.strip().splitlines()[0][:300] if message.strip() else ''}{place}"


def check_model_file(path: Path) -> dict:
    """read_model + describe, then inspect_model and load as the CLI calls them."""
    from onnxattack.loader import inspect_model, load
    from onnxattack.model import describe, read_model

    stage = "read_model"
    try:
        describe(read_model(path), path)
        stage = "inspect"
        report = inspect_model(path, device="cpu")
        if not report["converts"]:
            stage = "load"
            load(path, device="cpu")
    except Exception as error:  # noqa: BLE001  (everything is classified; nothing escapes)
        outcome, message = classify(error)
        trace = "".join(traceback.format_exception(error)[-12:]) if outcome == "failure" else ""
        return {"outcome": outcome, "stage": stage, "type": type(error).__name__, "message": message,
                "trace": trace[-4000:]}
    return {"outcome": "ok", "stage": "done", "type": None, "message": "", "trace": ""}


def _limit_memory(extra_mb: int) -> None:
    """Cap the address space at what the imports took plus `extra_mb`."""
    with open("/proc/self/status") as handle:
        used_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:"))
    limit = (used_kb * 1024) + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _prepare(memory_mb: int) -> None:
    """The heavy imports, then the address-space cap (imports need more than the cap allows)."""
    import torch

    import onnxattack.loader  # noqa: F401

    torch.set_num_threads(1)
    if memory_mb > 0:
        _limit_memory(memory_mb)


def worker(seed: int, start: int, stop: int, models_dir: Path, work_dir: Path, names: tuple[str, ...],
           memory_mb: int, crash_at: tuple[int, ...] = ()) -> None:
    warnings.simplefilter("ignore")
    bases = base_models(models_dir, names)
    folder = work_dir / f"mutant-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    prepared = False
    for index in range(start, stop):
        try:
            mutant = make_mutant(bases, seed, index)
        except Exception as error:  # a bug of the generator, reported like any failure
            _emit({"event": "start", "index": index, "base": "?", "recipe": []})
            _emit({"event": "done", "index": index, "seconds": 0.0, "outcome": "failure", "stage": "generate",
                   "type": type(error).__name__, "message": classify(error)[1],
                   "trace": "".join(traceback.format_exception(error))[-4000:]})
            continue
        _emit({"event": "start", "index": index, "base": mutant.base, "recipe": list(mutant.recipe)})
        if index in crash_at:  # the driver's own test: a hard crash must be caught and attributed
            os.abort()
        if not prepared:
            _prepare(memory_mb)
            prepared = True
        path.write_bytes(mutant.data)
        started = time.monotonic()
        result = check_model_file(path)
        _emit({"event": "done", "index": index, "seconds": round(time.monotonic() - started, 4), **result})


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class Outcome:
    index: int
    base: str
    recipe: tuple[str, ...]
    outcome: str  # ok, exit2, exit3, failure, crash, timeout
    stage: str
    error_type: str | None
    message: str
    seconds: float
    trace: str = ""

    @property
    def accepted(self) -> bool:
        return self.outcome in ACCEPTED

    def describe(self, seed: int) -> str:
        return (f"seed {seed} mutant {self.index} ({self.base}: {', '.join(self.recipe)}): {self.outcome} "
                f"in {self.stage}: {self.error_type}: {self.message}")


def _lines(stream) -> Iterator[str]:
    yield from iter(stream.readline, "")


def _start_worker(seed: int, start: int, count: int, models_dir: Path, work_dir: Path, names: tuple[str, ...],
                  memory_mb: int, crash_at: tuple[int, ...], log,
                  module: str = "tests.fuzz_models") -> tuple[subprocess.Popen, queue.Queue]:
    command = [sys.executable, "-m", module, "--seed", str(seed), "--start", str(start),
               "--stop", str(count), "--models-dir", str(models_dir), "--work-dir", str(work_dir),
               "--models", ",".join(names), "--memory-mb", str(memory_mb)]
    if crash_at:
        command += ["--crash-at", ",".join(map(str, crash_at))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                               cwd=ROOT, env=env)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in _lines(process.stdout):
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def run_fuzz(seed: int, count: int, names: tuple[str, ...] = SUITE_MODELS, *, start: int = 0,
             work_dir: Path | None = None, timeout_s: float = 30.0, startup_timeout_s: float = 180.0,
             memory_mb: int = 2048, crash_at: tuple[int, ...] = (),
             progress: Callable[[Outcome], None] | None = None, worker_module: str = "tests.fuzz_models"
             ) -> list[Outcome]:
    """Run mutants [start, count) of `seed` in a sandboxed worker; one Outcome per mutant.

    worker_module: the module whose `main` is the worker (tests.fuzz_inputs fuzzes input files; `names`
    are then its base inputs)."""
    with tempfile.TemporaryDirectory(prefix="onnxattack-fuzz-") as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        models_dir = work / "bases"
        log_path = work / "worker.log"
        outcomes: list[Outcome] = []
        next_index = start
        with open(log_path, "a") as log:
            while next_index < count:
                process, lines = _start_worker(seed, next_index, count, models_dir, work, names, memory_mb,
                                               crash_at, log, worker_module)
                started: dict | None = None
                warm = False  # the first mutant of a worker also pays its imports
                try:
                    while True:
                        try:
                            line = lines.get(timeout=timeout_s if warm else startup_timeout_s)
                        except queue.Empty:
                            line = "timeout"
                        if line is None or line == "timeout":
                            break
                        record = json.loads(line)
                        if record["event"] == "start":
                            started = record
                        else:
                            warm = True
                            outcome = Outcome(record["index"], started["base"], tuple(started["recipe"]),
                                              record["outcome"], record["stage"], record["type"],
                                              record["message"], record["seconds"], record.get("trace", ""))
                            outcomes.append(outcome)
                            started, next_index = None, record["index"] + 1
                            if progress:
                                progress(outcome)
                finally:
                    _stop(process)
                if next_index >= count:
                    break
                if started is None:  # died or stalled outside any mutant: the harness itself is broken
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"fuzz worker {'stalled' if line == 'timeout' else 'died'} between mutants "
                                       f"(exit {process.returncode}):\n{tail}")
                kind = "timeout" if line == "timeout" else "crash"
                waited = timeout_s if warm else startup_timeout_s
                message = (f"no result after {waited:.0f} s" if kind == "timeout"
                           else f"worker died with exit status {process.returncode}")
                outcome = Outcome(started["index"], started["base"], tuple(started["recipe"]), kind, "worker",
                                  None, message, waited if kind == "timeout" else 0.0)
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
                next_index = started["index"] + 1
        return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fuzz worker (run by run_fuzz, not by hand)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--crash-at", default="", help="indices to abort at (the driver's own test)")
    args = parser.parse_args(argv)
    worker(args.seed, args.start, args.stop, args.models_dir, args.work_dir, tuple(args.models.split(",")),
           args.memory_mb, tuple(int(i) for i in args.crash_at.split(",") if i))


if __name__ == "__main__":
    main()
