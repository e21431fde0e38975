"""The HDF5 result file: chunked, compressed, appended batch by batch, resumable.

Crash safety: a batch is appended to every dataset, then `rows_written` is raised and the file
flushed. On resume every dataset is cut back to `rows_written`, so a batch cut short by a crash
is redone, never duplicated or half-kept.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import BadInputError
from .faults import maybe_crash

ROW_DATASETS = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv",
                "success", "attacked", "torch_agrees", "l2", "linf", "iterations")
# Attributes that must match for --resume to continue a file.
RUN_IDENTITY = ("model_sha256", "method", "target", "params", "seed", "scores_kind", "threshold",
                "n_inputs")


def _dataset_specs(sample_shape: tuple[int, ...], input_dtype: np.dtype, num_labels: int) -> dict:
    labels = (num_labels,)
    return {
        "x": (sample_shape, input_dtype), "x_adv": (sample_shape, input_dtype),
        "scores": (labels, np.float32), "scores_adv": (labels, np.float32),
        "y_pred": (labels, np.int8), "y_target": (labels, np.int8), "y_adv": (labels, np.int8),
        "success": ((), np.bool_), "attacked": ((), np.bool_), "torch_agrees": ((), np.bool_),
        "l2": ((), np.float32), "linf": ((), np.float32), "iterations": ((), np.int32),
    }


class ResultWriter:
    def __init__(self, handle: h5py.File) -> None:
        self.handle = handle

    @property
    def rows_written(self) -> int:
        return int(self.handle.attrs.get("rows_written", 0))

    @classmethod
    def create(cls, path: str | os.PathLike, sample_shape: tuple[int, ...], input_dtype: np.dtype,
               num_labels: int, attrs: dict[str, Any], overwrite: bool = False) -> ResultWriter:
        path = Path(path)
        if path.exists() and not overwrite:
            raise BadInputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        handle = h5py.File(path, "w")
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(input_dtype).itemsize)
        rows_per_chunk = int(max(1, min(256, (1 << 20) // row_bytes)))
        for name, (shape, dtype) in _dataset_specs(sample_shape, input_dtype, num_labels).items():
            handle.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                  chunks=(rows_per_chunk, *shape), compression="gzip",
                                  compression_opts=4, shuffle=True)
        for key, value in attrs.items():
            handle.attrs[key] = value
        handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.attrs["complete"] = False
        handle.attrs["rows_written"] = 0
        handle.flush()
        return cls(handle)

    @classmethod
    def resume(cls, path: str | os.PathLike, attrs: dict[str, Any]) -> ResultWriter:
        try:
            handle = h5py.File(path, "r+")
        except OSError as exc:
            raise BadInputError(f"cannot reopen {path} to resume: {exc}") from None
        for key in RUN_IDENTITY:
            stored = handle.attrs.get(key)
            if key in attrs and _plain(stored) != _plain(attrs[key]):
                handle.close()
                raise BadInputError(f"cannot resume {path}: it was written with {key}={_plain(stored)!r}, "
                                    f"this run has {attrs[key]!r}")
        writer = cls(handle)
        rows = writer.rows_written
        for name in ROW_DATASETS:
            if name in handle and handle[name].shape[0] != rows:
                handle[name].resize(rows, axis=0)  # drop a batch cut short by a crash
        handle.flush()
        return writer

    def append(self, rows: dict[str, np.ndarray]) -> None:
        count = len(rows["x"])
        start = self.rows_written
        for position, name in enumerate(ROW_DATASETS):
            dataset = self.handle[name]
            dataset.resize(start + count, axis=0)
            dataset[start:start + count] = rows[name]
            if position == 1:
                self.handle.flush()
                maybe_crash("mid-batch", start // count)
        self.handle.attrs["rows_written"] = start + count
        self.handle.flush()

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.handle.attrs[key] = value
        self.handle.flush()

    def close(self) -> None:
        if self.handle.id.valid:
            self.handle.close()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(handle: h5py.File) -> dict[str, Any]:
    return {key: _plain(value) for key, value in handle.attrs.items()}


def json_attr(handle: h5py.File, key: str, default: Any = None) -> Any:
    raw = handle.attrs.get(key)
    return default if raw is None else json.loads(_plain(raw))


def open_results(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"result file not found: {path}")
    try:
        handle = h5py.File(path, mode)
    except OSError as exc:
        raise BadInputError(f"{path} is not a readable HDF5 result file: {exc}") from None
    missing = [name for name in ("x_adv", "success", "y_target") if name not in handle]
    if missing:
        handle.close()
        raise BadInputError(f"{path} is not an onnxattack result file (missing {', '.join(missing)})")
    return handle


def begin_transfer(handle: h5py.File, name: str, rows: int, num_labels: int) -> h5py.Group:
    """Create (or replace) the group transfer/<name> with datasets to fill chunk by chunk."""
    group_name = f"transfer/{name}"
    if group_name in handle:
        del handle[group_name]
    group = handle.create_group(group_name)
    for dataset, shape, dtype in (("scores_adv", (rows, num_labels), np.float32),
                                  ("y_adv", (rows, num_labels), np.int8), ("success", (rows,), np.bool_)):
        compressed = {"compression": "gzip", "chunks": (min(rows, 4096), *shape[1:])} if rows else {}
        group.create_dataset(dataset, shape=shape, dtype=dtype, **compressed)
    return group
