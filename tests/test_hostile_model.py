"""Hostile external data: every location, offset and length is checked before a byte is read."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattack.errors import BadInputError, UnsupportedModelError
from onnxattack.model import _tensor_bytes, read_model

TEN_GB = 10 * 2**30
WEIGHT = np.arange(12, dtype=np.float32).reshape(6, 2)  # 48 bytes


def external_model(folder: Path, location: str, *, offset: int | str | None = None, length: int | None = None,
                   weight: np.ndarray = WEIGHT) -> Path:
    """x [N, 6] @ W [6, 2], W's data declared at `location` (offset / length omitted when None)."""
    tensor = numpy_helper.from_array(weight, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    fields = {"location": location, "offset": offset, "length": length}
    for key, value in fields.items():
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def sparse_file(path: Path, size: int, head: bytes = WEIGHT.tobytes()) -> Path:
    """A file of `size` bytes that costs no disk beyond `head` (the rest is a hole)."""
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def refused_without_reading(path: Path, error: type[Exception], match: str) -> None:
    """read_model refuses with one line, and allocates nothing near the data's claimed size."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as caught:
            read_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(caught.value)
    assert peak < 64 * 2**20, f"peak allocation {peak} bytes"


def test_honest_external_data_loads(tmp_path):
    sparse_file(tmp_path / "w.bin", WEIGHT.nbytes)
    model = read_model(external_model(tmp_path, "w.bin", offset=0, length=48))
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), WEIGHT)


def test_a_tensor_inside_a_larger_shared_file_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 16 + WEIGHT.tobytes() + b"\0" * 16)
    model = read_model(external_model(tmp_path, "w.bin", offset=16, length=48))
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), WEIGHT)


def test_a_missing_length_over_a_10_gb_sparse_file_is_refused(tmp_path):
    sparse_file(tmp_path / "w.bin", TEN_GB)
    refused_without_reading(external_model(tmp_path, "w.bin"), UnsupportedModelError,
                            f"holds {TEN_GB} bytes; its shape \\[6, 2\\] and type need 48")


def test_a_10_gb_length_is_refused(tmp_path):
    sparse_file(tmp_path / "w.bin", TEN_GB)
    refused_without_reading(external_model(tmp_path, "w.bin", offset=0, length=TEN_GB), UnsupportedModelError,
                            "need 48")


def test_a_length_past_the_end_of_the_file_is_refused(tmp_path):
    sparse_file(tmp_path / "w.bin", 48)
    refused_without_reading(external_model(tmp_path, "w.bin", offset=0, length=TEN_GB), UnsupportedModelError,
                            "outside its 48-byte file")
    refused_without_reading(external_model(tmp_path, "w.bin", offset=8, length=48), UnsupportedModelError,
                            "offset 8, length 48\\) lies outside")


def test_a_length_that_is_not_the_tensors_size_is_refused(tmp_path):
    sparse_file(tmp_path / "w.bin", 96, WEIGHT.tobytes() * 2)
    refused_without_reading(external_model(tmp_path, "w.bin", offset=0, length=96), UnsupportedModelError,
                            "holds 96 bytes.*need 48")
    refused_without_reading(external_model(tmp_path, "w.bin", offset=0, length=24), UnsupportedModelError,
                            "holds 24 bytes")


def test_a_symlink_leaving_the_folder_is_refused(tmp_path):
    outside = sparse_file(tmp_path / "secret.bin", 48)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "w.bin").symlink_to(outside)
    refused_without_reading(external_model(folder, "w.bin", offset=0, length=48), UnsupportedModelError,
                            "outside the model's folder")
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)
    refused_without_reading(external_model(folder, "sub/secret.bin", offset=0, length=48),
                            UnsupportedModelError, "outside the model's folder")


def test_a_symlink_even_inside_the_folder_is_refused(tmp_path):
    sparse_file(tmp_path / "real.bin", 48)
    (tmp_path / "w.bin").symlink_to(tmp_path / "real.bin")
    refused_without_reading(external_model(tmp_path, "w.bin", offset=0, length=48), UnsupportedModelError,
                            "is a symbolic link")


@pytest.mark.parametrize("location", ["/etc/hostname", "../w.bin", "", "."])
def test_absolute_parent_and_empty_locations_are_refused(tmp_path, location):
    folder = tmp_path / "models"
    folder.mkdir()
    sparse_file(tmp_path / "w.bin", 48)
    refused_without_reading(external_model(folder, location, offset=0, length=48), UnsupportedModelError,
                            "outside the model's folder")


def test_a_fifo_or_a_folder_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it would block for ever
    refused_without_reading(external_model(tmp_path, "pipe", offset=0, length=48), UnsupportedModelError,
                            "not a regular file")
    (tmp_path / "dir").mkdir()
    refused_without_reading(external_model(tmp_path, "dir", offset=0, length=48), UnsupportedModelError,
                            "not a regular file")


def test_a_missing_file_and_bad_numbers(tmp_path):
    refused_without_reading(external_model(tmp_path, "gone.bin", offset=0, length=48), BadInputError, "missing")
    sparse_file(tmp_path / "w.bin", 48)
    for offset in (-8, "eight", "1e99"):
        refused_without_reading(external_model(tmp_path, "w.bin", offset=offset, length=48),
                                UnsupportedModelError, "unreadable external-data fields|lies outside")


def test_packed_four_bit_weights_need_half_a_byte_each(tmp_path):
    """int4 values are packed two to a byte: 12 of them are 6 bytes, not the 12 numpy's stand-in claims."""
    assert _tensor_bytes(helper.make_tensor("W", TensorProto.INT4, [6, 2], [1] * 12)) == 6
    assert _tensor_bytes(helper.make_tensor("W", TensorProto.INT4, [5], [1] * 5)) == 3
    assert _tensor_bytes(numpy_helper.from_array(WEIGHT, "W")) == 48
    assert _tensor_bytes(helper.make_tensor("B", TensorProto.BOOL, [3], [1, 0, 1])) == 3
