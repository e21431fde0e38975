"""The HDF5 writer on its own: a half-written batch is cut back when a run resumes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from onnxattack.errors import BadInputError
from onnxattack.results import ROW_DATASETS, ResultWriter
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
