"""Fuzzing the input containers: mutated .npy / .npz / .h5 files fed to `onnxattack attack`.

Mutant `index` of run `seed` is a pure function of (seed, index, base file bytes). Each mutant runs
through the real command (click's runner, in the sandboxed worker of tests/fuzz_models.py: one JSON
line before and after each mutant, an address-space cap, a crash or hang pinned on its mutant). The
only acceptable ends: exit 0, or exit 2 / 3 with exactly one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import time
import traceback
import warnings
import zipfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .fuzz_models import BYTE_MUTATORS, Mutant, _emit, _prepare

FEATURES = 8
ROWS = np.random.default_rng(3).uniform(0.2, 0.8, (4, FEATURES)).astype(np.float32)
COMMAND = ["--method", "ml-deepfool", "--max-iter", "2", "--batch-size", "4", "--quiet"]
MODEL_NAME = "tiny.onnx"


# ---------------------------------------------------------------------------------------------
# Base inputs: the same rows in every container the CLI reads.

def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compression)
    return buffer.getvalue()


def _h5(path: Path, **options) -> bytes:
    import h5py

    with h5py.File(path, "w", track_order=False) as handle:
        handle.create_dataset("x", data=ROWS, track_times=False, **options)
    return path.read_bytes()


def _build(name: str, folder: Path) -> bytes:
    if name == "npy":
        return _npy(ROWS)
    if name == "npy-f64":
        return _npy(ROWS.astype(np.float64))
    if name == "npz":
        return _zip({"x.npy": _npy(ROWS)}, zipfile.ZIP_STORED)
    if name == "npz-deflated":
        return _zip({"x.npy": _npy(ROWS)}, zipfile.ZIP_DEFLATED)
    if name == "h5":
        return _h5(folder / "h5.h5")
    if name == "h5-chunked":
        return _h5(folder / "h5-chunked.h5", chunks=(2, FEATURES), compression="gzip", shuffle=True,
                   fletcher32=True)
    raise KeyError(name)


INPUT_BASES = ("npy", "npy-f64", "npz", "npz-deflated", "h5", "h5-chunked")


def suffix_of(base: str) -> str:
    return "." + base.split("-")[0]


def base_inputs(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Base input files' bytes, built into `folder` on first use (and the tiny model beside them)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MODEL_NAME).is_file():
        tiny_model(folder / MODEL_NAME)
    found = {}
    for name in names:
        path = folder / f"{name}.bin"
        if not path.is_file():
            path.write_bytes(_build(name, folder))
        found[name] = path.read_bytes()
    return found


def tiny_model(path: Path) -> Path:
    """x [N, 8] -> sigmoid(x W) [N, 3]: loads and attacks in milliseconds."""
    weight = numpy_helper.from_array(np.random.default_rng(1).normal(size=(FEATURES, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


# ---------------------------------------------------------------------------------------------
# Header edits: the .npy header dict (alone, or inside an .npz member) rewritten field by field.

SHAPES = ("()", "(0,)", "(4,)", "(0, 8)", "(4, 8)", "(4, 8, 1)", "(3, 8)", "(5, 8)", "(4, 0)", "(-1, 8)",
          "(10**12, 8)", "(4, 2**62)", "(2**63, 8)", "(4, 8.5)", "[4, 8]", "(4, 'a')", "None")
DESCRS = ("'<f4'", "'>f4'", "'<f8'", "'<f2'", "'|b1'", "'|u1'", "'<i8'", "'<U1'", "'|S4'", "'|O'", "'<c8'",
          "'|V4'", "'<M8[s]'", "[('a', '<f4')]", "('<f4', (8,))", "'float32'", "'<f16'", "'xyz'", "42", "''")
GARBAGE = ("", "{", "{}", "{'descr': '<f4'}", "__import__('os').getcwd()", "{'descr': '<f4', 'fortran_order': "
           "False, 'shape': (4, 8), 'extra': 1}", "\x00" * 10, "{'descr': '<f4', 'shape': (4, 8), 'shape': (1, 8)}")
_FIELD = {"shape": SHAPES, "descr": DESCRS, "fortran_order": ("True", "False", "1", "None")}


def _split_npy(data: bytes) -> tuple[bytes, str, bytes] | None:
    """(magic + version, header text, the rest) of .npy bytes; None when the first bytes are no header."""
    if len(data) < 10 or not data.startswith(b"\x93NUMPY"):
        return None
    wide = data[6] >= 2
    start = 12 if wide else 10
    size = int.from_bytes(data[8:start], "little")
    return data[:6] + data[6:8], data[start:start + size].decode("latin1"), data[start + size:]


def _join_npy(version: bytes, header: str, rest: bytes) -> bytes:
    text = header.encode("latin1", errors="replace")
    wide = version[6] >= 2
    return version + len(text).to_bytes(4 if wide else 2, "little") + text + rest


def edit_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One field of the header dict replaced (or the whole header by garbage, or its length by a lie)."""
    parts = _split_npy(data)
    if parts is None:
        return data, "header:none"
    version, header, rest = parts
    choice = rng.random()
    if choice < 0.15:
        text = rng.choice(GARBAGE)
        return _join_npy(version, text.ljust(len(header) - 1) + "\n", rest), f"header:garbage:{text[:20]!r}"
    if choice < 0.25:  # the declared header length lies
        cut = rng.randint(0, len(header) + 64)
        wide = version[6] >= 2
        length = cut.to_bytes(4 if wide else 2, "little")
        return version + length + header.encode("latin1") + rest, f"header:length:{cut}"
    if choice < 0.3:
        return bytes([0x93]) + b"NUMPY" + bytes([rng.choice((0, 1, 2, 3, 4, 255)), 0]) + data[8:], "header:version"
    field = rng.choice(sorted(_FIELD))
    value = rng.choice(_FIELD[field])
    edited = re.sub(rf"'{field}':\s*(\([^)]*\)|\[[^\]]*\]|'[^']*'|\w+)", f"'{field}': {value}", header, count=1)
    return _join_npy(version, edited, rest), f"header:{field}={value}"


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def edit_npz(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The member's .npy header edited, a member renamed, added or duplicated, then zipped again."""
    members = _members(data)
    compression = rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
    choice = rng.random()
    if choice < 0.6:
        edited, step = edit_header(members["x.npy"], rng)
        members["x.npy"] = edited
    elif choice < 0.75:
        members[rng.choice(("y.npy", "x", "../x.npy", "x.npy/", ".npy", "a/x.npy"))] = members.pop("x.npy")
        step = "npz:rename"
    elif choice < 0.9:
        members["y.npy"] = members["x.npy"][: rng.randrange(len(members["x.npy"]) + 1)]
        step = "npz:second-member"
    else:
        members = {"x.npy": members["x.npy"][:rng.randrange(len(members["x.npy"]))]}
        step = "npz:short-member"
    return _zip(members, compression), step


# ---------------------------------------------------------------------------------------------
# Mutants

def make_input_mutant(bases: dict[str, bytes], seed: int, index: int) -> Mutant:
    """Mutant `index` of run `seed`: header or member edits for .npy / .npz (half of those), byte edits
    (flips, truncations, splices) for every container, sometimes both."""
    rng = random.Random(f"onnxattack-input-fuzz:{seed}:{index}")
    base = rng.choice(sorted(bases))
    data = bases[base]
    recipe: list[str] = []
    style = rng.random()
    if style < 0.6 and base.startswith("npy"):
        data, step = edit_header(data, rng)
        recipe.append(step)
    elif style < 0.6 and base.startswith("npz"):
        data, step = edit_npz(data, rng)
        recipe.append(step)
    if style >= 0.45 or not recipe:
        buffer = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            if not buffer:
                break
            recipe.append(BYTE_MUTATORS[rng.choice(sorted(BYTE_MUTATORS))](buffer, rng))
        data = bytes(buffer)
    return Mutant(index, base, tuple(recipe), data)


# ---------------------------------------------------------------------------------------------
# The worker

def check_inputs_file(model: Path, path: Path, out: Path) -> dict:
    """`onnxattack attack MODEL PATH -o OUT`: exit 0, or 2 / 3 with one stderr line and no traceback."""
    from click.testing import CliRunner
    from onnxattack.cli.main import main

    result = CliRunner().invoke(main, ["attack", str(model), str(path), "-o", str(out), *COMMAND])
    stderr = result.stderr.strip()
    code = result.exit_code
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    if escaped:
        error = result.exception
        trace = "".join(traceback.format_exception(error)[-12:])
        return {"outcome": "failure", "stage": "attack", "type": type(error).__name__,
                "message": str(error).strip().splitlines()[0][:300] if str(error).strip() else "", "trace": trace}
    if code == 0:
        return {"outcome": "ok", "stage": "done", "type": None, "message": "", "trace": ""}
    lines = stderr.splitlines()
    if code in (2, 3) and len(lines) == 1 and "Traceback" not in result.output:
        return {"outcome": f"exit{code}", "stage": "attack", "type": f"exit {code}", "message": lines[0][:300],
                "trace": ""}
    return {"outcome": "failure", "stage": "attack", "type": f"exit {code}",
            "message": f"{len(lines)} stderr line(s): {stderr[:300]!r}", "trace": result.output[-4000:]}


def worker(seed: int, start: int, stop: int, bases_dir: Path, work_dir: Path, names: tuple[str, ...],
           memory_mb: int, crash_at: tuple[int, ...] = ()) -> None:
    warnings.simplefilter("ignore")
    bases = base_inputs(bases_dir, names)
    folder = work_dir / f"inputs-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    prepared = False
    for index in range(start, stop):
        mutant = make_input_mutant(bases, seed, index)
        _emit({"event": "start", "index": index, "base": mutant.base, "recipe": list(mutant.recipe)})
        if index in crash_at:
            os.abort()
        if not prepared:
            import onnxattack.cli.main  # noqa: F401  (imported before the address-space cap, as loader is)

            _prepare(memory_mb)
            prepared = True
        path = folder / f"inputs{suffix_of(mutant.base)}"
        out = folder / "out.h5"
        out.unlink(missing_ok=True)
        path.write_bytes(mutant.data)
        started = time.monotonic()
        result = check_inputs_file(bases_dir / MODEL_NAME, path, out)
        _emit({"event": "done", "index": index, "seconds": round(time.monotonic() - started, 4), **result})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="input fuzz worker (run by run_fuzz, not by hand)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True, help="where the base inputs are built")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--models", required=True, help="base inputs, comma-separated")
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--crash-at", default="")
    args = parser.parse_args(argv)
    worker(args.seed, args.start, args.stop, args.models_dir, args.work_dir, tuple(args.models.split(",")),
           args.memory_mb, tuple(int(i) for i in args.crash_at.split(",") if i))


if __name__ == "__main__":
    main()
