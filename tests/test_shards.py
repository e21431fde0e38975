"""--shard I/N, `merge`, `export` and `open_dataset`: shards merged equal the single-process run row for
row; a merge of shards that miss or repeat rows, or come from another run, exits 2 naming them."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main as cli

from onnxattack import AttackConfig, BadInputError, ConfigError, open_dataset, run_attack
from onnxattack.pipeline import shard_rows
from onnxattack.report import summarize
from onnxattack.results import ROW_DATASETS

CONFIG = AttackConfig(method="ml-deepfool", max_iter=10, target="random", seed=5, batch_size=3)
ROWS = 12


def same_rows(reference: Path, other: Path, start: int = 0, stop: int = ROWS) -> None:
    with h5py.File(reference, "r") as a, h5py.File(other, "r") as b:
        for name in ROW_DATASETS:
            assert np.array_equal(a[name][start:stop], b[name][:]), name


@pytest.fixture(scope="module")
def runs(zoo_model, zoo_inputs, tmp_path_factory):
    """The single-process reference and its three shards, each written by run_attack."""
    folder = tmp_path_factory.mktemp("shards")
    inputs = folder / "x.npy"
    np.save(inputs, zoo_inputs("digits-mosaic", ROWS))
    model = zoo_model("digits-mosaic")
    reference = run_attack(model, inputs, folder / "reference.h5", CONFIG)
    shards = [run_attack(model, inputs, folder / f"part{i}.h5", replace(CONFIG, shard=(i, 3))) for i in range(3)]
    return model, inputs, reference, shards


def test_shards_cover_the_batches_of_the_single_process_run():
    assert [shard_rows(12, 3, (i, 3)) for i in range(3)] == [(0, 3), (3, 6), (6, 12)]
    assert [shard_rows(10, 3, (i, 2)) for i in range(2)] == [(0, 6), (6, 10)]
    assert [shard_rows(4, 3, (i, 3)) for i in range(3)] == [(0, 0), (0, 3), (3, 4)]  # more shards than batches
    assert shard_rows(7, 3, None) == (0, 7)


def test_each_shard_holds_its_rows_of_the_single_process_run(runs):
    _, _, reference, shards = runs
    for shard, (start, stop) in zip(shards, [(0, 3), (3, 6), (6, 12)], strict=True):
        same_rows(reference, shard, start, stop)  # random targets drawn by global index included
        with h5py.File(shard, "r") as handle:
            attrs = handle.attrs
            assert (attrs["row_start"], attrs["row_stop"], attrs["shard_count"]) == (start, stop, 3)
            assert attrs["complete"] and attrs["n_inputs"] == stop - start


def test_merged_shards_equal_the_single_process_run(runs, tmp_path):
    _, _, reference, shards = runs
    result = CliRunner().invoke(cli, ["merge", *map(str, reversed(shards)), "-o", str(tmp_path / "merged.h5")])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged.h5"
    same_rows(reference, merged)
    with h5py.File(reference, "r") as a, h5py.File(merged, "r") as b:
        for key in ("model_sha256", "method", "target", "params", "seed", "n_inputs", "rows_written", "labels"):
            assert a.attrs[key] == b.attrs[key], key
        assert b.attrs["complete"] and not {"row_start", "row_stop", "shard_index"} & set(b.attrs)
    assert summarize(merged)["successes"] == summarize(reference)["successes"]


def _merge(*paths: Path, out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["merge", *map(str, paths), "-o", str(out)])
    return result.exit_code, result.output


def test_a_missing_shard_exits_2_naming_its_rows(runs, tmp_path):
    _, _, _, shards = runs
    code, output = _merge(shards[0], shards[2], out=tmp_path / "m.h5")
    assert code == 2 and "rows 3..5 of 12 are in no shard file" in output
    assert not (tmp_path / "m.h5").exists()


def test_overlapping_shards_exit_2_naming_the_rows(runs, tmp_path):
    _, _, _, shards = runs
    code, output = _merge(*shards, shards[1], out=tmp_path / "m.h5")
    assert code == 2 and "rows 3..5 are in both" in output


def test_an_unfinished_shard_exits_2_naming_its_missing_rows(runs, tmp_path):
    _, _, _, shards = runs
    cut = tmp_path / "cut.h5"
    cut.write_bytes(shards[2].read_bytes())
    with h5py.File(cut, "r+") as handle:
        handle.attrs["rows_written"], handle.attrs["complete"] = 3, False
    code, output = _merge(shards[0], shards[1], cut, out=tmp_path / "m.h5")
    assert code == 2 and "rows 9..11 of 12" in output


def test_shards_of_another_run_are_refused(runs, tmp_path):
    model, inputs, _, shards = runs
    other = run_attack(model, inputs, tmp_path / "other.h5", replace(CONFIG, shard=(1, 3), seed=6))
    code, output = _merge(shards[0], other, shards[2], out=tmp_path / "m.h5")
    assert code == 2 and "not from the same run" in output and "seed" in output
    code, output = _merge(shards[0], tmp_path.parent / "nothing.h5", out=tmp_path / "m.h5")
    assert code == 2 and "not found" in output


def test_a_shard_resumes_from_its_own_file(runs, tmp_path):
    model, inputs, reference, shards = runs
    cut = tmp_path / "cut.h5"
    cut.write_bytes(shards[2].read_bytes())  # rows 6..11, two batches: keep the first
    with h5py.File(cut, "r+") as handle:
        handle.attrs["rows_written"], handle.attrs["complete"] = 3, False
    run_attack(model, inputs, cut, replace(CONFIG, shard=(2, 3), resume=True))
    same_rows(reference, cut, 6, 12)
    with pytest.raises(BadInputError, match="cannot resume"):  # another shard's file is not resumed
        run_attack(model, inputs, cut, replace(CONFIG, shard=(1, 3), resume=True))


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "x"], "expected I/N"),
    (["--shard", "3/3"], "I in 0..N-1"),
    (["--shard", "0/2", "--engine", "ray"], "give --shard only with --engine local"),
    (["--workers", "2"], "applies to --engine ray only"),
])
def test_bad_shard_and_engine_options_exit_2(runs, tmp_path, args, message):
    model, inputs, _, _ = runs
    result = CliRunner().invoke(cli, ["attack", str(model), str(inputs), "-o", str(tmp_path / "o.h5"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o.h5").exists()


def test_config_checks_the_shard():
    with pytest.raises(ConfigError) as caught:
        AttackConfig(shard=(2, 2))
    assert caught.value.field == "shard"
    assert AttackConfig(shard=[1, 2]).shard == (1, 2)  # type: ignore[arg-type]


def test_the_ray_engine_without_ray_names_the_extra(runs, tmp_path, monkeypatch):
    model, inputs, _, _ = runs
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = CliRunner().invoke(cli, ["attack", str(model), str(inputs), "-o", str(tmp_path / "o.h5"),
                                      "--engine", "ray", "--method", "ml-deepfool"])
    assert result.exit_code == 2 and "pip install onnxattack[ray]" in result.output


def test_open_dataset_selects_rows_and_splits(runs):
    _, _, reference, _ = runs
    with h5py.File(reference, "r") as handle:
        success = handle["success"][:] & handle["attacked"][:]
        x, x_adv, y_pred = handle["x"][:], handle["x_adv"][:], handle["y_pred"][:]
    adv = open_dataset(reference)
    assert len(adv) == success.sum() and 0 < len(adv) < ROWS
    sample = adv[0]
    row = int(sample["index"])
    assert torch.equal(sample["x"], torch.as_tensor(x_adv[row])) and bool(sample["adv"])
    assert torch.equal(sample["y"], torch.as_tensor(y_pred[row]))
    both = open_dataset(reference, split="both", only_success=False, extra=("l2",))
    assert len(both) == 2 * ROWS and torch.equal(both[0]["x"], torch.as_tensor(x[0])) and "l2" in both[0]
    assert torch.equal(both[ROWS]["x"], torch.as_tensor(x_adv[0]))
    batches = list(open_dataset(reference, split="clean").iter_numpy(batch_size=4))
    assert np.array_equal(np.concatenate([b["x"] for b in batches]), x[success])
    labels = np.eye(ROWS, 4, dtype=np.float32)
    assert torch.equal(open_dataset(reference, labels=labels)[0]["y"], torch.as_tensor(labels[row]))
    with pytest.raises(BadInputError):
        open_dataset(reference, split="train")


def test_open_dataset_under_a_dataloader_with_two_workers(runs):
    _, _, reference, _ = runs
    dataset = open_dataset(reference, split="both")
    dataset[0]  # a handle open in the parent must not be shared with the workers
    # spawned workers take the dataset pickled (its handle dropped); forked ones could inherit torch's
    # native locks mid-use (seen: a forked worker stuck in torch's own per-worker seeding). timeout: a hung
    # worker fails the test instead of stalling the suite
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2,
                                         multiprocessing_context="spawn", timeout=300)
    seen = [(int(i), bool(a)) for batch in loader for i, a in zip(batch["index"], batch["adv"], strict=True)]
    assert sorted(seen) == sorted((int(r), a) for r in dataset.rows for a in (False, True))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["x"].shape[0] == 4 and batch["y"].shape == batch["y_target"].shape


def test_export_writes_every_dataset_to_npz(runs, tmp_path):
    _, _, reference, _ = runs
    out = tmp_path / "rows.npz"
    result = CliRunner().invoke(cli, ["export", str(reference), "-o", str(out), "--only-success"])
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as data, h5py.File(reference, "r") as handle:
        keep = handle["success"][:] & handle["attacked"][:]
        assert np.array_equal(data["index"], np.flatnonzero(keep))
        for name in ROW_DATASETS:
            assert np.array_equal(data[name], handle[name][:][keep]), name
        assert json.loads(str(data["attrs"]))["method"] == "ml-deepfool"
    again = CliRunner().invoke(cli, ["export", str(reference), "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
