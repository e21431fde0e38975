"""Reading model files safely and describing them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxattack.errors import BadInputError, UnsupportedModelError
from onnxattack.model import choose_score_output, describe, detect_scores_kind, read_labels, read_model
from onnxattack.types import ScoresKind

from .exporters import MLP, TwoOutputs, export_torch


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    export_torch(MLP(head="sigmoid"), torch.rand(2, 12), path, dynamo=False, opset=17)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"labels": json.dumps(list("abcde"))})
    onnx.save(model, str(path))
    return path


def test_describe_reports_io_opsets_producer_and_labels(mlp_path):
    model = read_model(mlp_path)
    info = describe(model, mlp_path)
    assert [i.name for i in info.inputs] == ["input"]
    assert info.inputs[0].shape == ("batch", 12)
    assert info.outputs[0].shape == ("batch", 5)
    assert info.opsets["ai.onnx"] == 17
    assert info.producer.startswith("pytorch")
    assert read_labels(info) == list("abcde")
    assert detect_scores_kind(model, "scores") is ScoresKind.PROBABILITIES


def test_labels_file_overrides_metadata(mlp_path, tmp_path):
    info = describe(read_model(mlp_path), mlp_path)
    (tmp_path / "labels.txt").write_text("v\nw\nx\ny\nz\n")
    assert read_labels(info, tmp_path / "labels.txt") == list("vwxyz")
    (tmp_path / "labels.json").write_text('["p", "q"]')
    assert read_labels(info, tmp_path / "labels.json") == ["p", "q"]


def test_missing_truncated_and_foreign_files_are_bad_input(mlp_path, tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        read_model(tmp_path / "absent.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp_path.read_bytes()[:200])
    with pytest.raises(BadInputError, match="not .*ONNX|not a readable"):
        read_model(truncated)
    foreign = tmp_path / "picture.onnx"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(BadInputError):
        read_model(foreign)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    weight = numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(model, str(folder / "ok.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert read_model(folder / "ok.onnx").graph.initializer[0].name == "W"
    escaped = onnx.load(str(folder / "ok.onnx"), load_external_data=False)
    for entry in escaped.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes((folder / "weights.bin").read_bytes())
    onnx.save(escaped, str(folder / "escaped.onnx"))
    with pytest.raises(UnsupportedModelError, match="outside the model's folder"):
        read_model(folder / "escaped.onnx")


def test_score_output_default_and_by_name(tmp_path):
    path = export_torch(TwoOutputs(), torch.rand(2, 12), tmp_path / "two.onnx", dynamo=False, opset=17,
                        output_names=["aux", "probs"])
    info = describe(read_model(path), path)
    assert choose_score_output(info).name == "aux"
    assert choose_score_output(info, "probs").name == "probs"
    with pytest.raises(BadInputError, match="no output named 'nope'"):
        choose_score_output(info, "nope")
