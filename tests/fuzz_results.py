"""Fuzzing result files: a real result file edited at random (attributes retyped or set out of range,
datasets deleted, resized, retyped or moved to a group), then read or continued by every command that
takes one: `report`, `export`, `validate`, `merge` and `attack --resume`.

Mutant `index` of run `seed` is a pure function of (seed, index) and the base file. The only acceptable
ends: exit 0, or exit 2 / 3 with exactly one line on stderr and no traceback; and a command that refuses
writes nothing (the file's bytes are compared before and after).
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main

from . import exporters as ex

ATTACK = ["--method", "ml-deepfool", "--max-iter", "3", "--batch-size", "4", "--quiet"]
COMMANDS = ("report", "export", "validate", "merge", "resume")
ATTRIBUTES = ("rows_written", "n_inputs", "params", "versions", "labels", "task", "threshold", "scores_kind",
              "method", "complete", "layout_version", "notes", "stall_reasons", "attack_input", "gradients",
              "shard_index", "row_start", "row_stop", "inputs_total", "model_sha256", "seed", "kind")
DATASETS = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv", "success", "attacked",
            "torch_agrees", "l2", "linf", "iterations", "queries", "model_calls", "stall_reason")
ODD_VALUES: tuple[object, ...] = (-1, 0, 10**9, 2**63 - 1, 1.5, float("nan"), "many", "", "{", "[1, 2]", b"\xff",
                                  True, np.array([1, 2, 3]), "{\"max_iter\": \"x\"}", "null")


@dataclass
class Base:
    model: Path
    inputs: Path
    results: Path
    shards: tuple[Path, Path]


def build_base(folder: Path) -> Base:
    """A tiny sigmoid MLP, its inputs, a complete result file and two shard files of the same run."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    model = ex.export_torch(ex.MLP(features=12, labels=5, head="sigmoid"), torch.rand(2, 12), folder / "m.onnx",
                            dynamo=False, opset=17)
    inputs = folder / "x.npy"
    np.save(inputs, np.random.default_rng(0).uniform(0, 1, (8, 12)).astype(np.float32))
    results = folder / "r.h5"
    _run("attack", model, inputs, "-o", results, *ATTACK)
    shards = (folder / "s0.h5", folder / "s1.h5")
    for index, shard in enumerate(shards):
        _run("attack", model, inputs, "-o", shard, *ATTACK, "--shard", f"{index}/2")
    return Base(model, inputs, results, shards)


def _run(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"building the fuzz base failed: {result.output}")


def _set_attribute(rng: random.Random, handle: h5py.File) -> str:
    key = rng.choice(ATTRIBUTES)
    value = rng.choice(ODD_VALUES)
    if rng.random() < 0.2 and key in handle.attrs:
        del handle.attrs[key]
        return f"del attr {key}"
    handle.attrs[key] = value
    return f"attr {key}={value!r}"


def _edit_dataset(rng: random.Random, handle: h5py.File) -> str:
    name = rng.choice(DATASETS)
    if name not in handle:
        return f"absent {name}"
    kind = rng.choice(("delete", "shorter", "longer", "retype", "scalar", "group", "reshape"))
    data = handle[name][()]
    del handle[name]
    if kind == "shorter":
        handle.create_dataset(name, data=data[: max(0, len(data) - rng.randint(1, 4))])
    elif kind == "longer":
        handle.create_dataset(name, data=np.concatenate([data, data[:3]]))
    elif kind == "retype":
        handle.create_dataset(name, data=np.array([b"text"] * len(data)))
    elif kind == "scalar":
        handle.create_dataset(name, data=np.float32(1))
    elif kind == "group":
        handle.create_group(name)
    elif kind == "reshape":
        handle.create_dataset(name, data=data.reshape(len(data), -1)[:, :1].repeat(7, axis=1))
    return f"{kind} {name}"


def _edit_transfer(rng: random.Random, handle: h5py.File) -> str:
    kind = rng.choice(("dataset", "junk-group", "odd-attrs"))
    if kind == "dataset":
        handle.create_dataset("transfer", data=np.zeros(3))
    elif kind == "junk-group":
        group = handle.require_group("transfer").create_group("other")
        group.create_dataset("success", data=np.array([b"yes"]))
    else:
        group = handle.require_group("transfer").create_group("odd")
        group.attrs["success_rate"] = "high"
    return f"transfer {kind}"


def _edit_inputs_group(rng: random.Random, handle: h5py.File) -> str:
    group = handle.require_group("inputs")
    if rng.random() < 0.5:
        group.create_dataset("%2E", data=np.zeros((len(handle["x"]) + 1, 2)))
        return "inputs/. (one row too many)"
    group.create_group("nested")
    return "inputs/nested group"


MUTATORS: tuple[Callable[[random.Random, h5py.File], str], ...] = (
    _set_attribute, _set_attribute, _edit_dataset, _edit_dataset, _edit_transfer, _edit_inputs_group)


@dataclass
class Outcome:
    index: int
    command: str
    recipe: list[str]
    exit_code: int
    message: str
    problem: str | None  # None: an acceptable end


def run_mutant(base: Base, seed: int, index: int, folder: Path) -> Outcome:
    rng = random.Random(f"{seed}:{index}")
    folder.mkdir(parents=True, exist_ok=True)
    command = COMMANDS[index % len(COMMANDS)]
    target = folder / ("s0.h5" if command == "merge" else "r.h5")
    shutil.copy(base.shards[0] if command == "merge" else base.results, target)
    recipe = []
    with h5py.File(target, "r+") as handle:
        for _ in range(rng.randint(1, 3)):
            try:
                recipe.append(rng.choice(MUTATORS)(rng, handle))
            except (ValueError, KeyError, TypeError, IndexError):  # clashes with an earlier edit: skipped
                recipe.append("skipped")
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    args: list[object] = {
        "report": ["report", target],
        "export": ["export", target, "-o", folder / "e.npz", "--overwrite"],
        "validate": ["validate", target, "--model", base.model],
        "merge": ["merge", target, base.shards[1], "-o", folder / "merged.h5", "--overwrite"],
        "resume": ["attack", base.model, base.inputs, "-o", target, *ATTACK, "--resume"],
    }[command]
    result = CliRunner().invoke(main, [str(a) for a in args])
    message = (result.stderr or "").strip()
    problem = None
    if result.exit_code not in (0, 2, 3):
        problem = f"exit {result.exit_code}: {type(result.exception).__name__}: {result.exception}"
    elif result.exit_code != 0 and (len(message.splitlines()) != 1 or "Traceback" in message):
        problem = f"not one line: {message[:300]!r}"
    elif result.exit_code != 0 and hashlib.sha256(target.read_bytes()).hexdigest() != before:
        problem = "a refused command changed the file"
    return Outcome(index, command, recipe, result.exit_code, message.splitlines()[-1] if message else "", problem)
