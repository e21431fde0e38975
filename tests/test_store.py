"""The HDF5 writer on its own: a half-written batch is cut back when a run resumes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from onnxattack.errors import BadInputError
from onnxattack.results import ROW_DATASETS, ResultFile, ResultWriter
from onnxattack.results.schema import dataset_specs


def _rows(count: int, start: int) -> dict:
    """A batch of every row column of the schema (x counts the rows)."""
    x = np.arange(start, start + count, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    specs = dataset_specs((3,), np.dtype(np.float32), 2)
    rows = {name: np.ones((count, *shape), dtype) for name, (shape, dtype) in specs.items()}
    rows.update(x=x, x_adv=x + 1)
    return rows


def test_resume_cuts_every_dataset_back_to_the_rows_written(tmp_path):
    path = tmp_path / "r.h5"
    identity = {"method": "ml-cw", "seed": 1}
    writer = ResultWriter.create(path, (3,), np.dtype(np.float32), 2, identity)
    writer.append(_rows(4, 0))
    writer.handle["x"].resize(7, axis=0)  # a crash left x three rows longer than the rest
    writer.close()
    resumed = ResultWriter.resume(path, identity)
    assert resumed.rows_written == 4
    assert {resumed.handle[name].shape[0] for name in ROW_DATASETS} == {4}
    resumed.append(_rows(2, 4))
    resumed.close()
    with h5py.File(path, "r") as handle:
        assert np.array_equal(handle["x"][:, 0], np.arange(6, dtype=np.float32))


def test_resume_refuses_a_file_written_with_other_settings(tmp_path):
    path = tmp_path / "r.h5"
    ResultWriter.create(path, (3,), np.dtype(np.float32), 2, {"method": "ml-cw", "seed": 1}).close()
    with pytest.raises(BadInputError, match="seed=1"):
        ResultWriter.resume(path, {"method": "ml-cw", "seed": 2})
    with pytest.raises(BadInputError, match="exists"):
        ResultWriter.create(path, (3,), np.dtype(np.float32), 2, {})


def test_appends_and_a_resume_keep_every_column_and_pass_through_input(tmp_path):
    """The writer keeps the file's rows and datasets itself between appends: what it writes must still be
    exactly what the reader reads back, across a resume, for every column dtype and an inputs/<name> dataset."""
    path = tmp_path / "r.h5"
    identity = {"method": "ml-cw", "seed": 1}
    rng = np.random.default_rng(0)
    mask = lambda count: rng.integers(0, 5, size=(count, 4)).astype(np.int64)  # noqa: E731
    writer = ResultWriter.create(path, (3,), np.dtype(np.float32), 2, identity, rows_per_chunk=4,
                                 passthrough={"mask": ((4,), np.dtype(np.int64))})
    batches = []
    for start, count in ((0, 4), (4, 3)):
        rows = _rows(count, start)
        rows["success"] = rng.random(count) > 0.5
        rows["scores"] = rng.random((count, 2)).astype(np.float64)  # converted to the dataset's float32
        rows["inputs/mask"] = mask(count)
        writer.append(rows)
        batches.append(rows)
    writer.close()
    resumed = ResultWriter.resume(path, identity)
    assert resumed.rows_written == 7
    rows = {**_rows(2, 7), "inputs/mask": mask(2)}
    resumed.append(rows)
    resumed.close()
    batches.append(rows)
    with ResultFile.open(path) as stored:
        assert stored.rows == 9 and stored.attrs["rows_written"] == 9
        for name in (*ROW_DATASETS, "inputs/mask"):
            expected = np.concatenate([np.asarray(batch[name]) for batch in batches])
            got = stored.column(name)
            assert got.dtype == stored.dataset(name).dtype
            np.testing.assert_array_equal(got, expected.astype(got.dtype), err_msg=name)


def test_a_batch_whose_columns_disagree_is_refused_before_any_write(tmp_path):
    path = tmp_path / "r.h5"
    writer = ResultWriter.create(path, (3,), np.dtype(np.float32), 2, {"method": "ml-cw"})
    writer.append(_rows(2, 0))
    short = {**_rows(3, 2), "l2": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="l2"):
        writer.append(short)
    wrong_shape = {**_rows(3, 2), "x_adv": np.zeros((3, 4), np.float32)}
    with pytest.raises(ValueError, match="x_adv"):
        writer.append(wrong_shape)
    assert writer.rows_written == 2
    writer.close()
    with ResultFile.open(path) as stored:
        assert stored.rows == 2
    with h5py.File(path, "r") as handle:  # refused before any dataset grew
        assert {handle[name].shape[0] for name in ROW_DATASETS} == {2}
