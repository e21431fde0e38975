"""Writing a result file: chunked, compressed, appended batch by batch, resumable.

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5s

from ..errors import BadInputError, first_line
from ..inputs import InputSource
from ..safety import check_output
from .reader import ResultFile, open_hdf5, plain
from .schema import (
    DECODED_GROUP,
    EPS_GROUP,
    GIVEN_GROUP,
    LAYOUT_VERSION,
    LEARNT_DATASET,
    ROW_DATASETS,
    RUN_IDENTITY,
    TRANSFER_COLUMNS,
    TRANSFER_GROUP,
    dataset_specs,
    passthrough_dataset,
)

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


def check_output_path(path: Path, resume: bool, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
                      what: str = "result file") -> Path:
    """Refuse, before any slow work, an output that would destroy something (safety.check_output: one of
    the command's inputs, a device, FIFO, folder or symlink, an existing file without --resume /
    --overwrite) or whose folder cannot hold it; a missing folder is created when it can be."""
    path = Path(path)
    if path.exists() and not (resume or overwrite) and path.is_file() and not path.is_symlink():
        raise BadInputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    return check_output(path, [source for source in inputs if source is not None], overwrite=resume or overwrite,
                        what=what, create_folder=True)


def replacement_path(out: Path) -> Path:
    """Where `attack --overwrite` writes before renaming onto an existing OUT: the old file stays whole
    until the new one is complete."""
    return out.with_name(f".{out.name}.replacing{out.suffix or '.h5'}")


def identity_mismatch(path: Path, stored: dict[str, Any], asked: dict[str, Any]) -> str | None:
    """Why a file written with `stored` attributes cannot be resumed by a run with `asked` ones (None if it
    can): the first differing key, and for the parameters the first differing parameter."""
    for key in RUN_IDENTITY:
        if key not in asked or plain(stored.get(key)) == plain(asked[key]):
            continue
        if key == "params":
            try:
                old, new = json.loads(str(stored.get(key))), json.loads(str(asked[key]))
            except (TypeError, ValueError):
                return f"cannot resume {path}: its params attribute is not JSON"
            if not isinstance(old, dict) or not isinstance(new, dict):
                return f"cannot resume {path}: its params attribute is not a JSON object"
            differing = sorted(name for name in {*old, *new} if old.get(name) != new.get(name))
            if differing:
                name = differing[0]
                return (f"cannot resume {path}: it was written with {name}={old.get(name)!r}, this run has "
                        f"{name}={new.get(name)!r}")
            continue
        return (f"cannot resume {path}: it was written with {key}={plain(stored.get(key))!r}, "
                f"this run has {asked[key]!r}")
    return None


def write_rows(dataset: h5py.Dataset, start: int, values: np.ndarray) -> None:
    """Grow `dataset` to start + len(values) rows and write `values` there (C-contiguous, of the dataset's
    dtype and row shape: ResultWriter.append checks), through h5py's low-level calls: slicing costs about
    0.1 ms of Python per call, as much as writing a batch of a row column itself. Every row write of a
    result file goes through this one function (the crash tests count its calls)."""
    dataset.id.set_extent((start + len(values), *values.shape[1:]))
    if not len(values):
        return
    rows = dataset.id.get_space()
    rows.select_hyperslab((start, *(0,) * (values.ndim - 1)), values.shape)
    dataset.id.write(h5s.create_simple(values.shape), rows, values)


class ResultWriter:
    def __init__(self, handle: h5py.File, rows: int | None = None, row_datasets: tuple[str, ...] | None = None) -> None:
        """rows, row_datasets: the file's rows_written and per-row datasets when the caller knows them
        (create, resume); else read from the file. Both are then kept here: an append changes them only
        through this writer, and asking the file again cost more than the write itself."""
        self.handle = handle
        self._path = Path(handle.filename)
        self._broken = False
        if rows is None:
            rows = int(handle.attrs.get("rows_written", 0))
        if row_datasets is None:
            row_datasets = ResultFile(handle, self._path).row_datasets()
        self._rows = rows
        self._datasets: dict[str, h5py.Dataset] = {}
        self._row_layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for name in row_datasets:
            self._keep(handle[name])

    def _keep(self, dataset: h5py.Dataset) -> None:
        name = dataset.name.lstrip("/")
        self._datasets[name] = dataset
        self._row_layout[name] = (tuple(dataset.shape[1:]), dataset.dtype)

    @property
    def rows_written(self) -> int:
        return self._rows

    @classmethod
    def create(cls, path: str | os.PathLike, sample_shape: tuple[int, ...], input_dtype: np.dtype,
               num_labels: int, attrs: dict[str, Any], rows_per_chunk: int = 32,
               overwrite: bool = False,
               passthrough: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None,
               given: dict[str, np.ndarray] | None = None) -> ResultWriter:
        """passthrough: a multi-input model's other inputs, name -> (sample shape, dtype), stored as
        inputs/<name> so that validate re-scores from the file alone; given: the inputs given once
        (--set, --broadcast), stored whole as given/<name>."""
        path = Path(path)
        check_output_path(path, resume=False, overwrite=overwrite)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = h5py.File(path, "w", fs_strategy="none")
        except OSError as exc:
            raise BadInputError(f"cannot create the result file {path}: {_reason(exc)}") from None
        row_bytes = max(1, int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(input_dtype).itemsize)
        rows = int(max(1, min(rows_per_chunk, (4 << 20) // row_bytes)))
        writer = cls(handle, rows=0, row_datasets=())
        try:
            specs = dataset_specs(sample_shape, input_dtype, num_labels)
            specs.update({passthrough_dataset(name): spec for name, spec in (passthrough or {}).items()})
            for name, (shape, dtype) in specs.items():
                writer._keep(handle.create_dataset(
                    name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(rows, *shape),
                    compression="gzip", compression_opts=4, shuffle=True))
            for name, value in (given or {}).items():
                handle.create_dataset(passthrough_dataset(name, GIVEN_GROUP), data=np.asarray(value))
            attrs = {**attrs, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "complete": False, "rows_written": 0, "layout_version": LAYOUT_VERSION}
            writer.set_attrs(**attrs)
        except (OSError, RuntimeError) as exc:
            writer.close()
            raise BadInputError(f"cannot create the result file {path}: {_reason(exc)}") from None
        return writer

    @classmethod
    def resume(cls, path: str | os.PathLike, attrs: dict[str, Any], source: InputSource | None = None,
               where: str = "inputs", offset: int = 0) -> ResultWriter:
        """Reopen `path` to continue it. Everything is checked read-only first (the run's identity, the
        rows_written count, the layout version, and with `source` the stored rows against the inputs),
        so a refused resume changes nothing; then every dataset is cut back to rows_written."""
        path = Path(path)
        with ResultFile.open(path) as stored:
            problem = identity_mismatch(path, stored.attrs, attrs)
            version = stored.attrs.get("layout_version", LAYOUT_VERSION)
            if problem is None and version != LAYOUT_VERSION:
                problem = (f"cannot resume {path}: it has result layout version {version!r}, this onnxattack "
                           f"writes version {LAYOUT_VERSION}")
            absent = [name for name in ROW_DATASETS if not stored.has(name)]
            if problem is None and absent:
                problem = f"cannot resume {path}: it lacks the dataset(s) {', '.join(absent)}"
            if problem is None and source is not None:
                problem = _inputs_mismatch(stored, source, where, offset)
            rows, row_datasets = stored.rows, stored.row_datasets()
            fixed = [name for name in row_datasets if stored.dataset(name).maxshape[0] is not None]
            if problem is None and fixed:
                problem = f"cannot resume {path}: its dataset {fixed[0]} cannot grow (not written by onnxattack)"
        if problem:
            raise BadInputError(problem)
        try:
            handle = h5py.File(path, "r+")
        except OSError as exc:
            raise BadInputError(f"cannot reopen {path} to resume: {_reason(exc)}") from None
        try:
            for name in row_datasets:
                if handle[name].shape[0] != rows:
                    handle[name].resize(rows, axis=0)  # drop a batch cut short by a crash
            handle.flush()
        except (OSError, RuntimeError, TypeError) as exc:
            handle.close()
            raise BadInputError(f"cannot resume {path}: {first_line(exc)}") from None
        return cls(handle, rows=rows, row_datasets=row_datasets)

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Grow every dataset by the batch, then raise rows_written and flush. A batch that may not fit
        (its raw bytes plus room for metadata) is refused before anything is written."""
        count = len(rows["x"])
        start = self._rows
        missing = sorted(set(self._datasets) ^ set(rows))
        if missing:
            raise BadInputError(f"{self._path} holds other datasets than the batch: {', '.join(missing)}")
        uneven = sorted(name for name, (shape, _) in self._row_layout.items()
                        if np.shape(rows[name]) != (count, *shape))
        if uneven:
            raise ValueError(f"a batch of {count} rows whose column(s) {', '.join(uneven)} have other lengths or "
                             f"row shapes than the file's datasets")
        batch = {name: np.ascontiguousarray(rows[name], dtype=dtype) for name, (_, dtype) in self._row_layout.items()}
        needed = sum(values.nbytes for values in batch.values()) + METADATA_ROOM
        room = room_left(self._path)
        if needed > room:
            reason = f"no room for the next batch: about {needed} bytes needed, {max(0, int(room))} left"
            raise self._write_failed(OSError(28, reason), start, broken=False)
        try:
            for name, dataset in self._datasets.items():
                write_rows(dataset, start, batch[name])
            self.handle.attrs["rows_written"] = start + count
            self.handle.flush()
        except (OSError, RuntimeError) as exc:  # h5py reports failed writes as either
            raise self._write_failed(exc, start) from None
        self._rows = start + count

    def learnt(self) -> tuple[np.ndarray, int] | None:
        """What a set attack learnt and the model calls per row it took, if this file holds it (a resume)."""
        return ResultFile(self.handle, self._path).learnt()

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


def _inputs_mismatch(stored: ResultFile, source: InputSource, where: str, offset: int, rows: int = 64) -> str | None:
    """The rows already written must be the inputs' rows (first and last few compared); row k of the file
    is input offset + k (a shard file starts at its first row)."""
    if stored.sample_shape != tuple(source.sample_shape):
        return (f"cannot resume {stored.path}: it holds inputs of shape {list(stored.sample_shape)}, {where} has "
                f"{list(source.sample_shape)}")
    done = stored.rows
    for start in sorted({0, max(0, done - rows)}):
        stop = min(done, start + rows)
        if stop <= start:
            continue
        given = next(source.batches(offset + start, offset + stop, stop - start))[1]
        kept = stored.column("x", start, stop)
        if not np.array_equal(kept, np.asarray(given, dtype=kept.dtype)):
            return (f"cannot resume {stored.path}: its rows {offset + start}..{offset + stop - 1} were written "
                    f"for other inputs than {where}")
    return None


class TransferWriter:
    """transfer/<name> in a result file: another model's verdict on the stored x_adv, chunk by chunk."""

    def __init__(self, path: str | os.PathLike, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self.results = ResultFile.open(path, "r+")
        group_name = f"{TRANSFER_GROUP}/{name}"
        handle = self.results.group
        if group_name in handle:
            del handle[group_name]
        self.group = handle.create_group(group_name)
        rows = self.results.rows
        for column, (shape, dtype) in dataset_specs((), np.dtype(np.float32), self.results.num_labels,
                                                    TRANSFER_COLUMNS).items():
            compressed = {"compression": "gzip", "chunks": (min(rows, 4096), *shape)} if rows else {}
            self.group.create_dataset(column, shape=(rows, *shape), dtype=dtype, **compressed)

    def write(self, start: int, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self.group[name][start:start + len(values)] = values

    def finish(self, **attrs: Any) -> None:
        self.group.attrs.update(attrs)
        self.results.close()

    def __enter__(self) -> TransferWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.results.close()


@contextmanager
def curve_writer(out: Path) -> Iterator[h5py.File]:
    """A curve file written under a temporary name and renamed into place once complete."""
    partial = out.with_name(out.name + ".gathering")
    try:
        with h5py.File(partial, "w") as handle:
            handle.create_group(EPS_GROUP)
            yield handle
        os.replace(partial, out)
    except (OSError, RuntimeError, ValueError) as exc:  # h5py reports failed writes as any of these
        partial.unlink(missing_ok=True)
        raise BadInputError(f"cannot write the curve file {out}: {getattr(exc, 'strerror', None) or exc}") from None


def copy_run(handle: h5py.File, part: Path, name: str) -> None:
    """Copy a whole result file into the curve file as eps/<name>."""
    with open_hdf5(part) as source:
        source.copy(source["/"], handle[EPS_GROUP], name=name)


TEXT_GROUP = "text"  # text/x, text/x_adv: a token-id run's rows decoded (attack --tokenizer)


def write_decoded(path: str | os.PathLike, clean: list[str], adversarial: list[str], **attrs: Any) -> None:
    """A CTC run's greedy decodes of x and x_adv into decoded/x and decoded/x_adv (UTF-8 strings, one per
    row), with what they were decoded with (`attrs`: the blank index and where it came from)."""
    try:
        with h5py.File(path, "a") as handle:
            if DECODED_GROUP in handle:
                del handle[DECODED_GROUP]
            group = handle.create_group(DECODED_GROUP)
            for name, texts in (("x", clean), ("x_adv", adversarial)):
                group.create_dataset(name, data=np.array(texts, dtype=object), dtype=h5py.string_dtype())
            for key, value in attrs.items():
                group.attrs[key] = value
    except (OSError, RuntimeError) as exc:
        raise StoreWriteError(f"writing the decoded strings into {path} failed ({_reason(exc)})") from None


def write_texts(path: str | os.PathLike, decode: Callable[[np.ndarray], list[str]]) -> list[tuple[str, str]]:
    """Decode a finished run's x and x_adv into text/x and text/x_adv (UTF-8 strings, one per row);
    returns (before, after) for the rows whose tokens changed."""
    with h5py.File(path, "a") as handle:
        x, x_adv = handle["x"][:], handle["x_adv"][:]
        before, after = decode(x), decode(x_adv)
        for name, texts in (("x", before), ("x_adv", after)):
            key = f"{TEXT_GROUP}/{name}"
            if key in handle:
                del handle[key]
            handle.create_dataset(key, data=np.array(texts, dtype=object), dtype=h5py.string_dtype())
    changed = (x != x_adv).reshape(len(x), -1).any(axis=1)
    return [(before[i], after[i]) for i in np.flatnonzero(changed)]
