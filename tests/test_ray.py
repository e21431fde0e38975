"""The Ray engine on a local cluster started here (2 CPUs, 2 workers, shared by the module): the merged
result equals the single-process run row for row; a worker killed mid-shard is restarted and its shard
resumes; a rerun after the driver died picks up every shard file where it stopped."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main as cli

from onnxattack import AttackConfig, run_attack
from onnxattack.engines import run
from onnxattack.merge import shard_path
from onnxattack.results import ROW_DATASETS

ray = pytest.importorskip("ray")

ROWS = 12
CONFIG = AttackConfig(method="ml-deepfool", max_iter=10, target="random", seed=5, batch_size=2)
RAY = replace(CONFIG, engine="ray", workers=2)
ARGS = ["--method", "ml-deepfool", "--max-iter", "10", "--target", "random", "--seed", "5", "--batch-size", "2"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Ray gives each 1-CPU worker one torch thread; runs compared with its rows use one thread too, so
    the float32 sums run in the same order and the rows are bitwise equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cluster(zoo_model, zoo_inputs, tmp_path_factory):
    """A 2-CPU local Ray cluster, the inputs, and the single-process reference (one torch thread)."""
    folder = tmp_path_factory.mktemp("ray")
    inputs = folder / "x.npy"
    np.save(inputs, zoo_inputs("digits-mosaic", ROWS))
    model = zoo_model("digits-mosaic")
    with one_thread():
        reference = run_attack(model, inputs, folder / "reference.h5", CONFIG)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield model, inputs, reference
    ray.shutdown()


def same_rows(reference: Path, other: Path) -> None:
    with h5py.File(reference, "r") as a, h5py.File(other, "r") as b:
        assert b.attrs["complete"] and int(b.attrs["rows_written"]) == ROWS == int(b.attrs["n_inputs"])
        for name in ROW_DATASETS:
            assert np.array_equal(a[name][:], b[name][:]), name


def test_the_ray_engine_equals_the_single_process_run(cluster, tmp_path):
    model, inputs, reference = cluster
    out = tmp_path / "ray.h5"
    result = CliRunner().invoke(cli, ["attack", str(model), str(inputs), "-o", str(out), *ARGS,
                                      "--engine", "ray", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    same_rows(reference, out)
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["rows"] == ROWS and summary["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.h5"]  # shard files merged, then removed


def test_the_library_entry_point_honours_engine_ray(cluster, tmp_path):
    """onnxattack.run_attack with AttackConfig(engine="ray") runs on Ray (it used to run locally, silently)."""
    model, inputs, reference = cluster
    out = run_attack(model, inputs, tmp_path / "lib.h5", RAY)
    same_rows(reference, out)
    with h5py.File(out, "r") as handle:
        assert json.loads(handle.attrs["merged_from"]) == [f"lib.shard-{i}-of-2.h5" for i in range(2)]


def _running_workers() -> list[int]:
    """Process ids of Ray actors now inside ShardWorker.run (Ray sets the process title)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::ShardWorker.run"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_killed_worker_is_restarted_and_its_shard_resumes(cluster, tmp_path):
    model, inputs, reference = cluster
    killed: list[int] = []
    seen: list[tuple[int, int, int, int]] = []
    stop = threading.Event()

    def kill_the_first_worker_inside_its_shard() -> None:
        # Polled from a thread, not from progress reports: a worker is inside ShardWorker.run from
        # loading its model to writing its last row, a window far longer than the polling period.
        while not stop.is_set() and not killed:
            for pid in _running_workers()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.005)

    def progress(done: int, total: int, successes: int, attacked: int) -> None:
        seen.append((done, total, successes, attacked))

    killer = threading.Thread(target=kill_the_first_worker_inside_its_shard, daemon=True)
    killer.start()
    try:
        out = run(model, inputs, tmp_path / "killed.h5", RAY, progress=progress)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was ever seen inside its shard"
    same_rows(reference, out)
    with h5py.File(reference, "r") as handle:
        successes, attacked = int(handle["success"][:].sum()), int(handle["attacked"][:].sum())
    assert seen[-1] == (ROWS, ROWS, successes, attacked)  # one bar over all workers


def test_a_rerun_after_the_driver_died_resumes_every_shard(cluster, tmp_path):
    model, inputs, reference = cluster
    out = tmp_path / "rerun.h5"
    first, second = shard_path(out, 0, 2), shard_path(out, 1, 2)
    with one_thread():
        run_attack(model, inputs, first, replace(CONFIG, shard=(0, 2)))  # finished before the crash
        run_attack(model, inputs, second, replace(CONFIG, shard=(1, 2)))
    with h5py.File(second, "r+") as handle:  # cut short by the crash: only its first batch was flushed
        handle.attrs["rows_written"], handle.attrs["complete"] = 2, False
    result = CliRunner().invoke(cli, ["attack", str(model), str(inputs), "-o", str(out), *ARGS,
                                      "--engine", "ray", "--workers", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    same_rows(reference, out)
    assert not first.exists() and not second.exists()


def test_a_worker_error_is_one_line_with_its_exit_code(cluster, tmp_path):
    _, inputs, _ = cluster
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    result = CliRunner().invoke(cli, ["attack", str(bogus), str(inputs), "-o", str(tmp_path / "o.h5"), *ARGS,
                                      "--engine", "ray", "--workers", "2", "--quiet"])
    assert result.exit_code in (2, 3) and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()
