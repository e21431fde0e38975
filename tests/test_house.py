"""The house: one owner for the result file, attacks that declare what they need, the model file read
once per command, and the newcomer's first hour (metadata defaults, zoo inputs, progress, help texts)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main

from onnxattack import AttackConfig, run_attack
from onnxattack.batch import BatchResult
from onnxattack.results import ROW_DATASETS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--method", "ml-deepfool", "--max-iter", "5", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def yeast(zoo_model, zoo_inputs, tmp_path_factory):
    """yeast-mlp declares input_range [-1, 1] in its metadata; its inputs leave [0, 1]."""
    folder = tmp_path_factory.mktemp("house")
    x = zoo_inputs("yeast-mlp", 6)
    assert x.min() < 0
    np.save(folder / "x.npy", x)
    return zoo_model("yeast-mlp"), folder / "x.npy"


def test_only_the_results_package_opens_result_files():
    for module in ("report", "dataset", "merge", "curve", "transfer", "pipeline", "batch", "crosscheck"):
        source = (ROOT / "onnxattack" / f"{module}.py").read_text()
        assert "h5py.File(" not in source and "import h5py" not in source, module
    assert "h5py.File(" not in (ROOT / "cli" / "main.py").read_text()


def test_batch_rows_are_the_schema_rows():
    assert [f.name for f in fields(BatchResult) if f.name != "other_inputs"] == list(ROW_DATASETS)


NEW_ATTACK = '''
import torch
from onnxattack.attacks import METHODS, Option
from onnxattack.attacks._budget import BudgetedAttack
from onnxattack.attacks.base import AttackResult
from onnxattack.types import Task


class Nudge(BudgetedAttack):
    name = "nudge"
    task = Task.CLASSIFICATION
    options = {"wobble": Option(float, "how far to wobble")}

    def __init__(self, eps=None, norm="inf", wobble=0.5, max_iter=1):
        self.eps, self.norm, self.wobble, self.max_iter = eps, norm, wobble, max_iter

    def run(self, victim, x, target, criterion):
        n = len(x)
        none = torch.zeros(n, dtype=torch.long)
        return AttackResult.from_inputs(x, x, torch.zeros(n, dtype=torch.bool), none, none)


METHODS[Nudge.name] = Nudge  # the one registry line
from click.testing import CliRunner
from onnxattack.cli.main import main
from onnxattack.config import AttackConfig

print(CliRunner().invoke(main, ["attack", "--help"]).output)
print("=====")
print(CliRunner().invoke(main, ["curve", "--help"]).output)
print("=====")
print(AttackConfig(method="nudge", attack_options={"wobble": 0.1}).build_attack().wobble)
'''


def test_a_new_attack_is_one_module_and_one_registry_line():
    """The CLI's options and help, and curve's methods, come from what methods declare."""
    output = subprocess.run([sys.executable, "-c", NEW_ATTACK], capture_output=True, text=True, check=True).stdout
    attack_help, curve_help, built = output.split("=====")
    assert "nudge" in attack_help and "--wobble" in attack_help and "How far to wobble" in attack_help
    assert "nudge" in curve_help and "ml-pgd" in curve_help
    assert float(built) == 0.1


def test_curve_offers_only_budgeted_methods_and_every_command_states_exit_codes():
    curve_help = invoke("curve", "--help").output
    assert "--method [ml-pgd|ml-square|universal|universal-topk]" in curve_help
    assert not re.search(r"^\s+--shard", curve_help, re.MULTILINE)
    for command in ("inspect", "attack", "curve", "validate", "report", "merge", "export"):
        assert "Exit codes: 0 done" in invoke(command, "--help").output, command
    assert "Exit codes" in invoke("--help").output


class OpenCounter:
    """Counts the opens of one file through Python's audit events (a process-wide hook, armed per test)."""

    path: str | None = None
    count = 0

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.path is not None and args and str(args[0]) == cls.path:
            cls.count += 1


sys.addaudithook(OpenCounter.hook)


def opens_of(path: Path, *args) -> tuple[int, object]:
    OpenCounter.path, OpenCounter.count = str(path), 0
    try:
        result = invoke(*args)
    finally:
        OpenCounter.path = None
    return OpenCounter.count, result


def test_the_model_file_is_read_once_per_command_and_its_metadata_range_is_the_default(yeast, tmp_path):
    model, inputs = yeast
    out = tmp_path / "r.h5"
    count, result = opens_of(model, "attack", model, inputs, "-o", out, *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert count == 1
    summary = json.loads(result.stdout)
    assert any("input range [-1, 1] from the model's metadata" in note for note in summary["notes"])
    with h5py.File(out, "r") as handle:
        assert json.loads(handle.attrs["params"])["box"] == [-1.0, 1.0]
    count, result = opens_of(model, "validate", out, "--model", model)
    assert result.exit_code == 0, result.output
    assert count == 1
    count, result = opens_of(model, "inspect", model, "--probe", inputs)
    assert result.exit_code == 0, result.output
    assert count == 1 and "input_range" in invoke("inspect", model, "--json").stdout


def test_resume_names_the_differing_parameter_and_changes_nothing(yeast, tmp_path):
    model, inputs = yeast
    out = tmp_path / "r.h5"
    assert invoke("attack", model, inputs, "-o", out, *FAST, "--limit", "3").exit_code == 0
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    result = invoke("attack", model, inputs, "-o", out, *FAST[:-2], "7", "--quiet", "--resume")
    assert result.exit_code == 2
    assert "max_iter=5" in result.output and "max_iter=7" in result.output and "{" not in result.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("value", ["many", -1, 10**6])
def test_a_tampered_rows_written_is_refused_in_one_line(yeast, tmp_path, value):
    model, inputs = yeast
    out = tmp_path / "r.h5"
    assert invoke("attack", model, inputs, "-o", out, *FAST).exit_code == 0
    with h5py.File(out, "r+") as handle:
        handle.attrs["rows_written"] = value
    for command in (["report", out], ["export", out, "-o", tmp_path / "e.npz"], ["validate", out, "--model", model]):
        result = invoke(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "rows_written" in result.output and len(result.output.strip().splitlines()) == 1


def test_validate_reads_the_other_model_as_told_and_export_carries_the_transfer_groups(yeast, tmp_path):
    model, inputs = yeast
    out = tmp_path / "r.h5"
    assert invoke("attack", model, inputs, "-o", out, *FAST).exit_code == 0
    result = invoke("validate", out, "--model", model, "--threshold", "1000", "--json")
    assert result.exit_code == 0, result.output
    assert invoke("export", out, "-o", tmp_path / "e.npz").exit_code == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as arrays, h5py.File(out, "r") as handle:
        assert np.array_equal(arrays["transfer/yeast-mlp/y_adv"], handle["transfer/yeast-mlp/y_adv"][:])
        assert not handle["transfer/yeast-mlp/y_adv"][:].any()  # no logit reaches 1000: nothing predicted
        assert handle["transfer/yeast-mlp"].attrs["model_path"] == str(model.resolve())


def test_progress_moves_within_a_batch(yeast, tmp_path):
    model, inputs = yeast
    seen: list[float] = []
    config = AttackConfig(method="ml-cw", max_iter=20, attack_options={"binary_steps": 2}, batch_size=6)
    run_attack(model, inputs, tmp_path / "p.h5", config, progress=lambda done, *_: seen.append(done))
    inside = [done for done in seen if 0 < done < 6]
    assert inside and inside == sorted(inside)  # the bar moves before the batch ends, never backwards
    assert seen[-1] == 6


def test_zoo_inputs_and_the_user_cache_folder(tmp_path, monkeypatch, zoo_inputs):
    monkeypatch.setenv("ONNXATTACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ONNXATTACK_ZOO_DIR", raising=False)
    result = invoke("zoo", "path", "yeast-mlp")
    assert result.output.strip() == str(tmp_path / "home" / "zoo" / "yeast-mlp.onnx")
    out = tmp_path / "x.npy"
    assert invoke("zoo", "inputs", "yeast-mlp", "--count", "5", "-o", out).exit_code == 0
    assert np.array_equal(np.load(out), zoo_inputs("yeast-mlp", 5))
    again = invoke("zoo", "inputs", "yeast-mlp", "-o", out)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_report_png_prints_the_file_it_wrote(yeast, tmp_path):
    model, inputs = yeast
    out = tmp_path / "r.h5"
    assert invoke("attack", model, inputs, "-o", out, *FAST).exit_code == 0
    result = invoke("report", out, "--png", tmp_path / "fig")
    assert result.exit_code == 0, result.output
    assert f"figure: {tmp_path / 'fig.png'}" in result.output and (tmp_path / "fig.png").is_file()


class PathOpens:
    """Counts the opens of each of several files through Python's audit events (armed per test)."""

    counts: dict[str, int] = {}

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event == "open" and args and str(args[0]) in cls.counts:
            cls.counts[str(args[0])] += 1


sys.addaudithook(PathOpens.hook)


def test_crosscheck_reads_each_model_file_once(yeast, tmp_path):
    """The reference (its variants are made from it in memory), a second model, and each variant file once
    written: one read each, however many runs each judges (it was 5 and 4 per file for three models)."""
    import importlib.util

    model, inputs = yeast
    other = tmp_path / "other.onnx"
    other.write_bytes(model.read_bytes())
    kept = tmp_path / "kept"
    variants = ["int8"] + [name for name, package in (("fp16", "onnxconverter_common"), ("openvino", "openvino"))
                           if importlib.util.find_spec(package) is not None]
    made = [kept / f"yeast-mlp.{name}.onnx" for name in variants if name != "openvino"]
    PathOpens.counts = {str(path): 0 for path in (model, other, *made)}
    try:
        result = invoke("crosscheck", model, inputs, "-o", tmp_path / "c.h5", "--variants", ",".join(variants),
                        "--keep-variants", kept, "--model", other, *FAST, "--json")
    finally:
        counts, PathOpens.counts = PathOpens.counts, {}
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["models"]) == len(variants) + 2
    assert counts == {str(path): 1 for path in (model, other, *made)}
