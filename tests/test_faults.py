"""Faults injected from the test side: SIGKILL at chosen and random moments during `attack` and
`validate`, a NaN born inside the model, a disk that fills up, a folder that is a file.

After each kill the file must open, and --resume (or a rerun) must give exactly the rows of an
uninterrupted run.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from onnxattack import AttackConfig, BadInputError, MLDeepFool, attack_arrays, load, run_attack

ROOT = Path(__file__).resolve().parents[1]
ATTACK = ["--method", "ml-deepfool", "--max-iter", "10", "--target", "random", "--seed", "5",
          "--batch-size", "3", "--quiet"]
COMPARED = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv", "success", "attacked",
            "torch_agrees", "l2", "linf", "iterations", "queries", "model_calls")


def _cli(*args, fault: str | None = None, preexec=None) -> subprocess.CompletedProcess:
    prefix = ["-m", "tests.crash_wrapper", fault, "--"] if fault else ["-m", "onnxattack.cli.main"]
    return subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, preexec_fn=preexec)


@pytest.fixture(scope="module")
def setup(zoo_model, zoo_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    np.save(folder / "x.npy", zoo_inputs("digits-mosaic", 12))
    model = zoo_model("digits-mosaic")
    reference = folder / "reference.h5"
    assert _cli("attack", model, folder / "x.npy", "-o", reference, *ATTACK).returncode == 0
    assert _cli("validate", reference, "--model", model, "--model", zoo_model("digits-ranker")).returncode == 0
    return model, folder, reference


def _same_rows(reference: Path, other: Path) -> None:
    with h5py.File(reference, "r") as a, h5py.File(other, "r") as b:
        assert b.attrs["complete"] and int(b.attrs["rows_written"]) == a["x"].shape[0]
        for name in COMPARED:
            assert np.array_equal(a[name][:], b[name][:]), name


def _readable(path: Path) -> None:
    if path.exists():
        with h5py.File(path, "r") as handle:
            rows = int(handle.attrs["rows_written"])
            for name in COMPARED:
                assert handle[name].shape[0] >= rows
                handle[name][:rows]


# 4 batches x 16 datasets = 64 dataset writes (K drawn below 52), 1 + 2 per batch flushes, and timed
# kills that land wherever the process is (inside HDF5's C code too): drawn with a fixed seed, so every
# run of the suite tries the same moments.
_RNG = np.random.default_rng(7)
FAULTS = ([f"write:{k}" for k in sorted(_RNG.choice(np.arange(1, 52), size=5, replace=False))]
          + [f"flush:{k}" for k in sorted(_RNG.choice(np.arange(1, 9), size=3, replace=False))]
          + [f"after:{s:.3f}" for s in _RNG.uniform(0.0, 1.0, size=3)])  # anywhere, C code included


@pytest.mark.parametrize("fault", FAULTS)
def test_attack_killed_then_resumed_gives_the_rows_of_an_uninterrupted_run(setup, tmp_path, fault):
    model, folder, reference = setup
    out = tmp_path / "crashed.h5"
    killed = _cli("attack", model, folder / "x.npy", "-o", out, *ATTACK, fault=fault)
    if killed.returncode == 0:  # the run ended before the kill came: only a timed kill may come too late
        assert fault.startswith("after:"), f"{fault} never fired: the run's writes or flushes went uncounted"
        _same_rows(reference, out)
        return
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _readable(out)
    resumed = _cli("attack", model, folder / "x.npy", "-o", out, *ATTACK, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_rows(reference, out)


@pytest.mark.parametrize("fault", ["write:1", "write:2", "write:4", "flush:1"])
def test_validate_killed_then_rerun_gives_the_same_transfer_groups(setup, tmp_path, zoo_model, fault):
    model, _, reference = setup
    out = tmp_path / "copy.h5"
    out.write_bytes(reference.read_bytes())
    with h5py.File(out, "r+") as handle:
        del handle["transfer"]
    args = ("validate", out, "--model", model, "--model", zoo_model("digits-ranker"))
    killed = _cli(*args, fault=fault)
    assert killed.returncode in (0, -signal.SIGKILL), killed.stderr
    _readable(out)
    assert _cli(*args).returncode == 0
    with h5py.File(reference, "r") as a, h5py.File(out, "r") as b:
        for name in ("digits-mosaic", "digits-ranker"):
            for dataset in ("scores_adv", "y_adv", "success"):
                assert np.array_equal(a[f"transfer/{name}/{dataset}"][:], b[f"transfer/{name}/{dataset}"][:])


def test_a_disk_that_fills_up_exits_2_and_keeps_what_was_written(setup, tmp_path):
    model, folder, _ = setup
    out = tmp_path / "full.h5"
    limit = 100_000  # bytes: the file's first batches fit, later ones do not

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = _cli("attack", model, folder / "x.npy", "-o", out, *ATTACK, preexec=small_disk)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "rerun with --resume" in result.stderr
    with h5py.File(out, "r") as handle:
        written = int(handle.attrs["rows_written"])
        assert 0 < written < 12
        assert handle["x"][:written].shape[0] == written
    resumed = _cli("attack", model, folder / "x.npy", "-o", out, *ATTACK, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_rows(setup[2], out)


def test_an_output_folder_that_is_a_file_exits_2(setup, tmp_path):
    model, folder, _ = setup
    (tmp_path / "plain").write_text("not a folder")
    result = _cli("attack", model, folder / "x.npy", "-o", tmp_path / "plain" / "out.h5", *ATTACK)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert (tmp_path / "plain").read_text() == "not a folder"


def test_a_read_only_output_folder_exits_2(setup, tmp_path):
    model, folder, _ = setup
    target = Path("/proc/onnxattack-results/out.h5")  # read-only even for root
    result = _cli("attack", model, folder / "x.npy", "-o", target, *ATTACK)
    assert result.returncode == 2 and "cannot" in result.stderr and "Traceback" not in result.stderr


class LogOfInput(nn.Module):
    """Scores log(x_0 - 0.5): NaN wherever the first feature is below 0.5 (a log inside the model)."""

    def forward(self, x):
        return torch.stack([torch.log(x[:, 0] - 0.5), x[:, 1] - 0.5, x[:, 2] - 0.5], dim=1)


def test_a_nan_born_inside_the_model_stays_in_its_row(tmp_path):
    path = tmp_path / "log.onnx"
    torch.onnx.export(LogOfInput(), (torch.rand(2, 3),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["scores"], dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}})
    probe = np.array([[0.9, 0.2, 0.8], [0.8, 0.7, 0.3]], dtype=np.float32)
    model = load(path, device="cpu", probe=probe)
    x = np.array([[0.9, 0.7, 0.3], [0.1, 0.7, 0.3], [0.9, 0.2, 0.3]], dtype=np.float32)  # row 1 scores NaN
    result = attack_arrays(model, x, MLDeepFool(max_iter=20), "+2")
    assert np.isnan(result.scores[1, 0])
    assert not result.success[1]
    assert result.success[[0, 2]].all()
    np.save(tmp_path / "x.npy", x)
    run_attack(path, tmp_path / "x.npy", tmp_path / "r.h5",
               AttackConfig(method="ml-deepfool", target="+2", device="cpu", max_iter=20))
    with h5py.File(tmp_path / "r.h5", "r") as handle:
        assert list(handle["success"][:]) == [True, False, True]


def test_user_inputs_are_refused_not_blamed_on_the_model(setup, tmp_path):
    model, folder, _ = setup
    x = np.load(folder / "x.npy")
    cases = {
        "nan.npy": (np.where(np.arange(x.size).reshape(x.shape) == 700, np.nan, x), "row 2: NaN"),
        "range.npy": (x * 10, "inputs span [0, 10]"),
        "strings.npy": (np.array([["a", "b"]] * 3), "strings"),
        "complex.npy": (x.astype(np.complex64), "complex"),
        "rank.npy": (x[:, 0], "rows of shape [16, 16]"),
        "empty.npy": (x[:0], "no batch of inputs"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        result = _cli("attack", model, tmp_path / name, "-o", tmp_path / f"{name}.h5", *ATTACK)
        assert result.returncode == 2, (name, result.stderr)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and message in line and name in line, (name, line)
        assert not (tmp_path / f"{name}.h5").exists()


def test_resume_refuses_other_inputs_or_model(setup, tmp_path, zoo_model):
    model, folder, reference = setup
    out = tmp_path / "r.h5"
    out.write_bytes(reference.read_bytes())
    other = np.load(folder / "x.npy")[::-1].copy()
    np.save(tmp_path / "other.npy", other)
    result = _cli("attack", model, tmp_path / "other.npy", "-o", out, *ATTACK, "--resume")
    assert result.returncode == 2 and "other inputs" in result.stderr
    with pytest.raises(BadInputError, match="model_sha256"):
        run_attack(zoo_model("digits-ranker"), folder / "x.npy", out,
                   AttackConfig(method="ml-deepfool", max_iter=10, target="random", seed=5, batch_size=3,
                                resume=True, device="cpu"))


# A command whose Ctrl-C is raised while a finalizer runs: Python can only report such an exception
# ("Exception ignored in ..."), and the command would run to its end as if never interrupted. This is how
# a Ctrl-C, or a server's command whose caller died, was lost when it landed in a weakref callback.
CTRL_C_IN_A_FINALIZER = """
import signal, sys, time
from onnxattack.cli.main import handle_errors

class Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the KeyboardInterrupt is raised here, inside the finalizer
            pass

@handle_errors
def command():
    Finalized()
    time.sleep(0.2)
    print("ran to its end")

command()
"""


def test_a_ctrl_c_that_lands_in_a_finalizer_still_interrupts_the_command():
    done = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_FINALIZER], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "onnxattack: error: interrupted; what was written stays readable (continue with --resume)"]
