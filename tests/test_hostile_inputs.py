"""Input containers are read as data only: every hostile .h5 / .npz / .npy is exit code 2 with one line
naming the reason, before a row is read and before a result file exists."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnxattack.cli.main import main

from onnxattack.errors import BadInputError
from onnxattack.inputs import checked_hdf5_dataset

ROOT = Path(__file__).resolve().parents[1]
FEATURES = 8
ROWS = np.random.default_rng(0).uniform(0.2, 0.8, (3, FEATURES)).astype(np.float32)
# Values no attack could produce from ROWS: if they reach an output, the external file leaked.
SECRET = np.full((3, FEATURES), 0.123456789, dtype=np.float32)
FAST = ["--method", "ml-deepfool", "--max-iter", "3", "--quiet"]


def tiny_model(path: Path) -> Path:
    """x [N, 8] -> sigmoid(x W) [N, 3]."""
    weight = numpy_helper.from_array(np.random.default_rng(1).normal(size=(FEATURES, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def attack(model: Path, inputs: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["attack", str(model), str(inputs), "-o", str(out), *FAST, *extra])


def refused(model: Path, inputs: Path, message: str, *extra: str) -> str:
    out = inputs.parent / "out.h5"
    before = sorted(inputs.parent.iterdir())
    result = attack(model, inputs, out, *extra)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    line = result.stderr.strip()
    assert result.exit_code == 2, (inputs.name, result.output)
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output, line
    assert message in line, line
    assert sorted(inputs.parent.iterdir()) == before  # no result file, no part file, nothing else
    return line


def _h5(path: Path, build: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "w") as handle:
        build(handle)
    return path


def _external_storage(folder: Path) -> Path:
    (folder / "secret.bin").write_bytes(SECRET.tobytes())
    return _h5(folder / "inputs.h5", lambda f: f.create_dataset("x", shape=SECRET.shape, dtype=np.float32,
                                                                  external=[("secret.bin", 0, SECRET.nbytes)]))


def _virtual(folder: Path) -> Path:
    _h5(folder / "source.h5", lambda f: f.create_dataset("x", data=SECRET))
    layout = h5py.VirtualLayout(shape=SECRET.shape, dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(folder / "source.h5"), "x", shape=SECRET.shape)
    return _h5(folder / "inputs.h5", lambda f: f.create_virtual_dataset("x", layout))


def _external_link(folder: Path) -> Path:
    _h5(folder / "source.h5", lambda f: f.create_dataset("x", data=SECRET))

    def build(handle: h5py.File) -> None:
        handle["x"] = h5py.ExternalLink(str(folder / "source.h5"), "x")
    return _h5(folder / "inputs.h5", build)


def _soft_link(folder: Path) -> Path:
    def build(handle: h5py.File) -> None:
        handle["data/x"] = ROWS
        handle["x"] = h5py.SoftLink("/data/x")
    return _h5(folder / "inputs.h5", build)


def _dangling_soft_link(folder: Path) -> Path:
    def build(handle: h5py.File) -> None:
        handle["x"] = h5py.SoftLink("/nowhere")
    return _h5(folder / "inputs.h5", build)


def _vlen(folder: Path) -> Path:
    def build(handle: h5py.File) -> None:
        dataset = handle.create_dataset("x", (3,), dtype=h5py.vlen_dtype(np.float32))
        for row in range(3):
            dataset[row] = ROWS[row]
    return _h5(folder / "inputs.h5", build)


def _references(folder: Path) -> Path:
    def build(handle: h5py.File) -> None:
        dataset = handle.create_dataset("x", (3, FEATURES), dtype=h5py.ref_dtype)
        dataset[0, 0] = handle.ref
    return _h5(folder / "inputs.h5", build)


def _unknown_filter(folder: Path) -> Path:
    """A dataset whose creation list names an unregistered filter (made optional so HDF5 writes it)."""
    def build(handle: h5py.File) -> None:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((3, FEATURES))
        plist.set_filter(33000, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple((3, FEATURES))
        h5py.h5d.create(handle.id, b"x", h5py.h5t.IEEE_F32LE, space, dcpl=plist)
    return _h5(folder / "inputs.h5", build)


def _npy_member(raw: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        with zipfile.ZipFile(folder / "inputs.npz", "w") as archive:
            archive.writestr("x.npy", raw)
        return folder / "inputs.npz"
    return build


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _header(text: bytes) -> bytes:
    text = text + b" " * (117 - len(text)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _file(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return build


OBJECTS = np.empty((3, FEATURES), dtype=object)
OBJECTS[:] = 0.5

HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "h5 external raw storage": (_external_storage, "keeps its values in other files (secret.bin)"),
    "h5 virtual dataset": (_virtual, "is a virtual dataset"),
    "h5 external link": (_external_link, "is an external link to"),
    "h5 dangling soft link": (_dangling_soft_link, "x is a soft link to /nowhere"),
    "h5 strings": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset("x", data=[[b"a"] * 8] * 3)),
                   "holds strings"),
    "h5 variable-length strings": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset(
        "x", data=["a", "b", "c"], dtype=h5py.string_dtype())), "holds strings"),
    "h5 compound": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset(
        "x", data=np.zeros((3, FEATURES), dtype=[("a", "f4"), ("b", "i4")]))), "holds records"),
    "h5 variable-length rows": (_vlen, "variable-length sequences"),
    "h5 object references": (_references, "object references"),
    "h5 array dtype": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset(
        "x", (3,), dtype=np.dtype(("f4", (FEATURES,))))), "a fixed-size array (8,) per element"),
    "h5 scalar": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset("x", data=np.float32(0.5))),
                  "a single value (a scalar dataset)"),
    "h5 empty dataspace": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset("x", dtype="f4")),
                           "empty dataspace"),
    "h5 complex": (lambda d: _h5(d / "inputs.h5", lambda f: f.create_dataset("x", data=ROWS.astype(np.complex64))),
                   "complex numbers"),
    "h5 unknown filter plugin": (_unknown_filter, "filter plugin(s) [33000]"),
    "h5 not hdf5": (_file("inputs.h5", b"\x89HDF\r\n\x1a\n" + bytes(200)), "not a readable HDF5 file"),
    "npz bad member header": (_npy_member(_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 8) ")
                                          + bytes(96)), "not a readable .npy member"),
    "npz header calling code": (_npy_member(_header(b"{'descr': __import__('os').getcwd(), 'fortran_order': False, "
                                                    b"'shape': (3, 8), }") + bytes(96)),
                                "not a readable .npy member"),
    "npz truncated member": (_npy_member(_npy_bytes(ROWS)[:-10]), "truncated or padded"),
    "npz huge claimed shape": (_npy_member(_header(b"{'descr': '<f4', 'fortran_order': False, "
                                                   b"'shape': (10**12, 8), }") + bytes(96)),
                               "not a readable .npy member"),
    "npz scalar member": (_npy_member(_npy_bytes(np.float32(0.5))), "a single value (a 0-d array)"),
    "npz pickled objects": (_npy_member(_npy_bytes(OBJECTS)), "holds Python objects"),
    "npz not a zip": (_file("inputs.npz", b"not a zip file" * 20), "is not a readable .npz file"),
    "npz empty zip": (_file("inputs.npz", b"PK\x05\x06" + bytes(18)), "holds several arrays ()"),
    "npy truncated": (_file("inputs.npy", _npy_bytes(ROWS)[:-10]), "is not a readable .npy file"),
    "npy truncated header": (_file("inputs.npy", _npy_bytes(ROWS)[:20]), "is not a readable .npy file"),
    "npy pickled objects": (_file("inputs.npy", _npy_bytes(OBJECTS)), "is not a readable .npy file"),
    "npy scalar": (_file("inputs.npy", _npy_bytes(np.float32(0.5))), "a single value (a 0-d array)"),
    "npy rows without values": (_file("inputs.npy", _npy_bytes(np.zeros((4, 0), np.float32))),
                                "holds no batch of inputs (shape [4, 0])"),
    "npy records": (_file("inputs.npy", _npy_bytes(np.zeros((3, 8), dtype=[("a", "f4")]))), "holds records"),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_files_are_refused_in_one_line(model, tmp_path, case):
    build, message = HOSTILE[case]
    refused(model, build(tmp_path), message)


def test_a_key_through_a_soft_link_is_refused_and_the_dataset_itself_is_read(model, tmp_path):
    inputs = _soft_link(tmp_path)
    refused(model, inputs, "x is a soft link to /data/x", "--key", "x")
    result = attack(model, inputs, tmp_path / "out.h5", "--key", "data/x")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        assert np.array_equal(handle["x"][:], ROWS)


def test_a_group_given_as_key_and_a_path_through_an_external_link(model, tmp_path):
    _h5(tmp_path / "source.h5", lambda f: f.create_dataset("inner/x", data=SECRET))

    def build(handle: h5py.File) -> None:
        handle["rows/x"] = ROWS
        handle["outside"] = h5py.ExternalLink(str(tmp_path / "source.h5"), "inner")
    inputs = _h5(tmp_path / "inputs.h5", build)
    refused(model, inputs, "has no array 'rows' (arrays: outside, rows/x)", "--key", "rows")
    refused(model, inputs, "has no array 'outside/x'", "--key", "outside/x")  # never followed to find out
    refused(model, inputs, "outside is an external link to", "--key", "outside")


def test_external_storage_never_gets_the_other_files_bytes_into_anything(model, tmp_path):
    inputs = _external_storage(tmp_path)
    result = subprocess.run([sys.executable, "-m", "onnxattack.cli.main", "attack", str(model), str(inputs), "-o",
                             str(tmp_path / "out.h5"), *FAST], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "0.123" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.h5", "secret.bin"]
    with h5py.File(inputs, "r") as handle:  # the file still declares it: the refusal, not a lucky miss, kept it out
        assert handle["x"].external


def test_the_same_arrays_stored_plainly_are_attacked(model, tmp_path):
    """The refusals above are about the containers: the same rows in plain containers pass."""
    for name, build in (("plain.h5", lambda p: _h5(p, lambda f: f.create_dataset("x", data=ROWS))),
                        ("plain.npz", lambda p: np.savez(p, x=ROWS)), ("plain.npy", lambda p: np.save(p, ROWS))):
        build(tmp_path / name)
        result = attack(model, tmp_path / name, tmp_path / f"{name}.out.h5")
        assert result.exit_code == 0, (name, result.output)


def test_a_fifo_or_a_device_as_inputs_is_never_opened(model, tmp_path):
    os.mkfifo(tmp_path / "inputs.npy")  # opening it would wait for a writer for ever
    refused(model, tmp_path / "inputs.npy", "not a regular file or a folder")
    (tmp_path / "zero.h5").symlink_to("/dev/zero")
    refused(model, tmp_path / "zero.h5", "not a regular file or a folder")


def test_checked_hdf5_dataset_serves_any_hdf5_file_a_user_hands_over(tmp_path):
    """The check the input reader uses, called on an open file (as result-file readers can)."""
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    with h5py.File(tmp_path / "results.h5", "w") as handle:
        handle["x_adv"] = ROWS
        handle.create_dataset("x", shape=SECRET.shape, dtype=np.float32, external=[("secret.bin", 0, SECRET.nbytes)])
        handle["alias"] = h5py.SoftLink("/x_adv")
    with h5py.File(tmp_path / "results.h5", "r") as handle:
        assert np.array_equal(checked_hdf5_dataset(handle, "x_adv", "results.h5")[:], ROWS)
        for name, message in (("x", "external raw storage"), ("alias", "soft link"), ("nope", "not a dataset")):
            with pytest.raises(BadInputError, match=message):
                checked_hdf5_dataset(handle, name, "results.h5")
