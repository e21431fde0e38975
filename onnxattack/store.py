"""The HDF5 result file: chunked, compressed, appended batch by batch, resumable.

Crash safety: a batch is appended to every dataset, then `rows_written` is raised and the file
flushed. On resume every dataset is cut back to `rows_written`, so a batch cut short by a crash
is redone, never duplicated or half-kept. Chunks hold one batch of rows, so an append writes new
chunks instead of rewriting flushed ones, and the file is created without free-space reuse
(fs_strategy "none"): space that the last flushed state points to is never overwritten before
the next flush. A write that fails (disk full, file size limit) leaves that state readable.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h5py
import numpy as np

from .errors import BadInputError, first_line
from .inputs import InputSource

ROW_DATASETS = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv",
                "success", "attacked", "torch_agrees", "l2", "linf", "iterations", "queries",
                "model_calls")
PASSTHROUGH_GROUP = "inputs"  # a multi-input model's other inputs, one dataset per input name


def passthrough_dataset(name: str) -> str:
    """inputs/<name>; a '/' in an input name (tf2onnx's scopes) is written %2F, so it stays one dataset."""
    return f"{PASSTHROUGH_GROUP}/{name.replace('%', '%25').replace('/', '%2F')}"


def passthrough_names(handle: h5py.File) -> list[str]:
    """The input names stored under inputs/ (in the file's order)."""
    group = handle.get(PASSTHROUGH_GROUP)
    return [unquote(key) for key in group] if isinstance(group, h5py.Group) else []


def row_datasets(handle: h5py.File) -> tuple[str, ...]:
    """Every per-row dataset of a result file: ROW_DATASETS and the pass-through inputs/<name>."""
    return ROW_DATASETS + tuple(passthrough_dataset(name) for name in passthrough_names(handle))


# What a set attack (universal) learnt from the whole input set, written before any row.
LEARNT_DATASET = "universal_delta"

# Attributes that must match for --resume to continue a file.
RUN_IDENTITY = ("model_sha256", "method", "target", "params", "seed", "scores_kind", "threshold",
                "n_inputs", "row_start", "row_stop")


def _dataset_specs(sample_shape: tuple[int, ...], input_dtype: np.dtype, num_labels: int) -> dict:
    labels = (num_labels,)
    return {
        "x": (sample_shape, input_dtype), "x_adv": (sample_shape, input_dtype),
        "scores": (labels, np.float32), "scores_adv": (labels, np.float32),
        "y_pred": (labels, np.int8), "y_target": (labels, np.int8), "y_adv": (labels, np.int8),
        "success": ((), np.bool_), "attacked": ((), np.bool_), "torch_agrees": ((), np.bool_),
        "l2": ((), np.float32), "linf": ((), np.float32), "iterations": ((), np.int32),
        "queries": ((), np.int64), "model_calls": ((), np.int64),
    }


# Room kept free beyond a batch's raw bytes for the metadata HDF5 adds as the file grows.
METADATA_ROOM = 64 << 10


class StoreWriteError(BadInputError):
    """Writing the result file failed (disk full, file size limit); the last flushed rows stay readable.

    The HDF5 handle is then left as it is: closing it would retry the failed writes."""


def _reason(exc: Exception) -> str:
    for known in ("File too large", "No space left on device", "Disk quota exceeded"):
        if known in str(exc):
            return known
    return getattr(exc, "strerror", None) or first_line(exc)


def room_left(path: Path) -> float:
    """Bytes the file may still grow by: free disk space, and the process's file size limit."""
    room = float(shutil.disk_usage(path.parent).free)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        room = min(room, limit - (path.stat().st_size if path.exists() else 0))
    return room


def check_output_path(path: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any slow work, an output that exists (without --resume / --overwrite) or whose
    folder cannot hold it."""
    if path.exists() and not path.is_file():
        raise BadInputError(f"cannot write the result file {path}: it is a folder or a special file")
    if path.exists() and not (resume or overwrite):
        raise BadInputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(f"cannot write the result file {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and parent == path.parent:
                raise BadInputError(f"cannot write the result file {path}: folder {parent} is not writable")
            break


class ResultWriter:
    def __init__(self, handle: h5py.File) -> None:
        self.handle = handle
        self._path = Path(handle.filename)
        self._broken = False

    @property
    def rows_written(self) -> int:
        return int(self.handle.attrs.get("rows_written", 0))

    @classmethod
    def create(cls, path: str | os.PathLike, sample_shape: tuple[int, ...], input_dtype: np.dtype,
               num_labels: int, attrs: dict[str, Any], rows_per_chunk: int = 32,
               overwrite: bool = False,
               passthrough: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None) -> ResultWriter:
        """passthrough: a multi-input model's other inputs, name -> (sample shape, dtype), stored as
        inputs/<name> so that validate re-scores from the file alone."""
        path = Path(path)
        check_output_path(path, resume=False, overwrite=overwrite)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = h5py.File(path, "w", fs_strategy="none")
        except OSError as exc:
            raise BadInputError(f"cannot create the result file {path}: {_reason(exc)}") from None
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(input_dtype).itemsize)
        rows = int(max(1, min(rows_per_chunk, (4 << 20) // row_bytes)))
        writer = cls(handle)
        try:
            specs = _dataset_specs(sample_shape, input_dtype, num_labels)
            specs.update({passthrough_dataset(name): spec for name, spec in (passthrough or {}).items()})
            for name, (shape, dtype) in specs.items():
                handle.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                      chunks=(rows, *shape), compression="gzip", compression_opts=4, shuffle=True)
            attrs = {**attrs, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "complete": False, "rows_written": 0}
            writer.set_attrs(**attrs)
        except (OSError, RuntimeError) as exc:
            writer.close()
            raise BadInputError(f"cannot create the result file {path}: {_reason(exc)}") from None
        return writer

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
        for name in row_datasets(handle):
            if name in handle and handle[name].shape[0] != rows:
                handle[name].resize(rows, axis=0)  # drop a batch cut short by a crash
        handle.flush()
        return writer

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Grow every dataset by the batch, then raise rows_written and flush. A batch that may not fit
        (its raw bytes plus room for metadata) is refused before anything is written."""
        count = len(rows["x"])
        start = self.rows_written
        names = row_datasets(self.handle)
        missing = sorted(set(names) ^ set(rows))
        if missing:
            raise BadInputError(f"{self._path} holds other datasets than the batch: {', '.join(missing)}")
        needed = sum(np.asarray(rows[name]).nbytes for name in names) + METADATA_ROOM
        room = room_left(self._path)
        if needed > room:
            reason = f"no room for the next batch: about {needed} bytes needed, {max(0, int(room))} left"
            raise self._write_failed(OSError(28, reason), start, broken=False)
        try:
            for name in names:
                dataset = self.handle[name]
                dataset.resize(start + count, axis=0)
                dataset[start:start + count] = rows[name]
            self.handle.attrs["rows_written"] = start + count
            self.handle.flush()
        except (OSError, RuntimeError) as exc:  # h5py reports failed writes as either
            raise self._write_failed(exc, start) from None

    def learnt(self) -> tuple[np.ndarray, int] | None:
        """What a set attack learnt and the model calls per row it took, if this file holds it (a resume)."""
        if LEARNT_DATASET not in self.handle:
            return None
        dataset = self.handle[LEARNT_DATASET]
        return np.asarray(dataset), int(dataset.attrs.get("model_calls", 0))

    def write_learnt(self, learnt: np.ndarray, model_calls: int) -> None:
        try:
            dataset = self.handle.create_dataset(LEARNT_DATASET, data=learnt)
            dataset.attrs["model_calls"] = model_calls
            self.handle.flush()
        except (OSError, RuntimeError) as exc:
            raise self._write_failed(exc, self.rows_written) from None

    def set_attrs(self, **attrs: Any) -> None:
        try:
            for key, value in attrs.items():
                self.handle.attrs[key] = value
            self.handle.flush()
        except (OSError, RuntimeError) as exc:
            raise self._write_failed(exc, self.rows_written) from None

    def _write_failed(self, exc: Exception, rows: int, broken: bool = True) -> StoreWriteError:
        self._broken = broken
        if not broken:
            self.close()
        return StoreWriteError(f"writing {self._path} failed ({_reason(exc)}); the {rows} rows written before "
                               f"stay readable: make room and rerun with --resume")

    def check_same_inputs(self, source: InputSource, where: str, rows: int = 64, offset: int = 0) -> None:
        """On resume: the rows already written must be the inputs' rows (first and last few compared);
        row k of the file is input offset + k (a shard file starts at its first row)."""
        done = self.rows_written
        stored = self.handle["x"]
        if tuple(stored.shape[1:]) != tuple(source.sample_shape):
            self.close()
            raise BadInputError(f"cannot resume {self.handle_name}: it holds inputs of shape {list(stored.shape[1:])}, "
                                f"{where} has {list(source.sample_shape)}")
        for start in sorted({0, max(0, done - rows)}):
            stop = min(done, start + rows)
            if stop <= start:
                continue
            given = next(source.batches(offset + start, offset + stop, stop - start))[1]
            if not np.array_equal(np.asarray(stored[start:stop]), np.asarray(given, dtype=stored.dtype)):
                self.close()
                raise BadInputError(f"cannot resume {self.handle_name}: its rows {offset + start}..{offset + stop - 1} "
                                    f"were written "
                                    f"for other inputs than {where}")

    @property
    def handle_name(self) -> str:
        return str(self._path)

    def close(self) -> None:
        if self._broken:
            return  # a failed write: closing would retry it; the last flushed state is what counts
        try:
            if self.handle.id.valid:
                self.handle.close()
        except (OSError, RuntimeError):
            pass


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
    if missing and _plain(handle.attrs.get("kind")) == "curve":
        handle.close()
        raise BadInputError(f"{path} is a curve file: each of its runs is a group eps/<value> (`onnxattack curve "
                            f"... --resume` prints the curve)")
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
