"""Reading a result file: the one place that opens it for reading.

    with ResultFile.open("out.h5") as results:
        rows = results.rows                      # rows durably written
        success = results.column("success")      # the first `rows` rows
        for name, group in results.transfers().items(): ...

A curve file (`onnxattack curve`) holds one run per epsilon: `CurveFile.open(path).run(eps)` is a
ResultFile over the group eps/<value>. Every check of what the file claims (rows_written, the
datasets a result file needs) is made here, so readers never repeat a fallback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadInputError
from ..inputs import checked_hdf5_dataset
from ..types import Task
from .schema import (
    DECODED_GROUP,
    EPS_GROUP,
    GIVEN_GROUP,
    LEARNT_DATASET,
    PASSTHROUGH_GROUP,
    REQUIRED,
    ROW_DATASETS,
    ROWS,
    TRANSFER_COLUMNS,
    TRANSFER_GROUP,
    passthrough_dataset,
    passthrough_name,
)


def plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):  # text that is not UTF-8 (a file edited by hand) prints with replacements
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # an attribute written as an array (by hand): compared as a list
        return value.tolist()
    return value


def open_hdf5(path: str | os.PathLike, mode: str = "r", what: str = "result file") -> h5py.File:
    """An existing HDF5 file, or BadInputError with one line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} not found: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise BadInputError(f"{path} is not a readable HDF5 {what}: {exc}") from None


TRANSFER_NAMES = tuple(column.name for column in TRANSFER_COLUMNS)
# Attributes stored as JSON, and the type each must decode to.
JSON_ATTRIBUTES: dict[str, type] = {"labels": list, "notes": list, "params": dict, "stall_reasons": dict,
                                    "versions": dict}


class ResultFile:
    """A run's rows and attributes (the root of a result file, or one eps/<value> group of a curve)."""

    def __init__(self, group: h5py.Group, path: Path, owner: h5py.File | None = None) -> None:
        self.group = group
        self.path = path
        self._owner = owner  # the file handle this view closes, if it opened it
        self.attrs: dict[str, Any] = {key: plain(value) for key, value in group.attrs.items()}
        missing = [name for name in REQUIRED if name not in group]
        if missing:
            self.close()
            if self.attrs.get("kind") == "curve" and "x_adv" not in group:
                raise BadInputError(f"{path} is a curve file: each of its runs is a group eps/<value> "
                                    f"(`onnxattack curve ... --resume` prints the curve)")
            raise BadInputError(f"{path} is not an onnxattack result file (missing {', '.join(missing)})")
        problem = self._layout_problem() or self._attribute_problem()
        if problem:
            self.close()
            raise BadInputError(f"{path}: {problem}")
        self.rows = self._rows_written()

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> ResultFile:
        """A result file from disk: every dataset a reader may touch is checked to be plain data stored in
        this file (no external or virtual storage, no links elsewhere) before a value is read."""
        handle = open_hdf5(path, mode)
        results = cls(handle, Path(path), owner=handle)
        try:
            results.check_storage()
        except BadInputError:
            results.close()
            raise
        return results

    def check_storage(self) -> None:
        """Every dataset a reader may touch is plain data stored in this file (BadInputError otherwise)."""
        prefix = "" if self.group.name == "/" else f"{self.group.name.lstrip('/')}/"
        for name in (*self.row_datasets(), *self.transfer_datasets()):
            checked_hdf5_dataset(self.group.file, prefix + name, str(self.path))

    def transfer_datasets(self) -> list[str]:
        group = self.group.get(TRANSFER_GROUP)
        if not isinstance(group, h5py.Group):
            return []
        return [f"{TRANSFER_GROUP}/{model}/{name}" for model, sub in group.items() if isinstance(sub, h5py.Group)
                for name in sub]

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owner is not None and self._owner.id.valid:
            self._owner.close()

    def _layout_problem(self) -> str | None:
        """What makes the row datasets unreadable as the schema's columns (None when they are fine)."""
        for group in (TRANSFER_GROUP, PASSTHROUGH_GROUP, GIVEN_GROUP):
            if group in self.group and not isinstance(self.group[group], h5py.Group):
                return f"{group} is not a group"
        for model, sub in self.group.get(TRANSFER_GROUP, {}).items():
            if not isinstance(sub, h5py.Group) or any(not isinstance(sub.get(name), h5py.Dataset)
                                                      for name in TRANSFER_NAMES):
                return f"{TRANSFER_GROUP}/{model} lacks its datasets ({', '.join(TRANSFER_NAMES)})"
            for key in ("success_rate", "flip_rate", "attacked"):
                value = plain(sub.attrs.get(key, 0))
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    return f"{TRANSFER_GROUP}/{model}: attribute {key}={value!r} is not a number"
        datasets = {}
        for column in ROWS:
            value = self.group.get(column.name)
            if value is None:
                continue
            if not isinstance(value, h5py.Dataset):
                return f"{column.name} is not a dataset"
            datasets[column.name] = value
        labels = datasets["y_target"].shape[1:] if datasets["y_target"].ndim == 2 else None
        if labels is None:
            return "y_target is not a [rows, labels] dataset"
        for column in ROWS:
            dataset = datasets.get(column.name)
            if dataset is None:
                continue
            expected = {"row": 1, "labels": 2}.get(column.shape)
            if expected is not None and dataset.ndim != expected:
                return f"{column.name} has shape {list(dataset.shape)}, not a {column.shape} column"
            if column.shape == "labels" and dataset.shape[1:] != labels:
                return f"{column.name} has {dataset.shape[1]} labels, y_target {labels[0]}"
            sample = datasets["x_adv"].shape[1:]
            if column.shape == "sample" and (dataset.ndim < 1 or dataset.shape[1:] != sample):
                return f"{column.name} has rows of shape {list(dataset.shape[1:])}, x_adv {list(sample)}"
        return None

    def _attribute_problem(self) -> str | None:
        """An attribute readers rely on that has the wrong type (a file edited by hand), if any."""
        for key, kind in JSON_ATTRIBUTES.items():
            raw = self.attrs.get(key)
            if raw is None:
                continue
            try:
                value = json.loads(raw)
            except (TypeError, ValueError):
                return f"attribute {key} is not JSON ({str(raw)[:40]!r})"
            if not isinstance(value, kind):
                return f"attribute {key} is not a JSON {kind.__name__}"
        task = self.attrs.get("task", Task.CLASSIFICATION.value)
        if not isinstance(task, str) or task not in {t.value for t in Task}:
            return f"attribute task={task!r} is not one of {', '.join(t.value for t in Task)}"
        for key, kinds in (("threshold", (int, float)), ("seed", (int,)), ("elapsed_s", (int, float)),
                           ("n_inputs", (int,))):
            value = self.attrs.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, kinds):
                return f"attribute {key}={value!r} is not a number"
        return None

    @property
    def task(self) -> Task:
        return Task(self.attrs.get("task", Task.CLASSIFICATION.value))

    def _rows_written(self) -> int:
        """rows_written, checked against the datasets (a file that lacks it counts its success rows)."""
        length = min(self.group[name].shape[0] for name in self.row_datasets()
                     if isinstance(self.group[name], h5py.Dataset) and self.group[name].ndim)
        raw = self.attrs.get("rows_written", length)
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)) or not 0 <= int(raw) <= length:
            self.close()
            raise BadInputError(f"{self.path}: attribute rows_written={raw!r} is not a row count between 0 and "
                                f"the {length} rows its datasets hold")
        return int(raw)

    # --- rows -------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.group

    def column(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a row dataset, never past the rows written (empty when absent)."""
        stop = self.rows if stop is None else min(stop, self.rows)
        if name not in self.group:
            return np.zeros(0)
        return np.asarray(self.group[name][start:stop])

    def take(self, name: str, rows: np.ndarray | slice | int) -> np.ndarray:
        """Selected rows of a row dataset (a row, increasing indices, or a slice)."""
        return np.asarray(self.group[name][rows])

    def dataset(self, name: str) -> h5py.Dataset:
        return self.group[name]

    @property
    def attacked(self) -> np.ndarray:
        return self.column("attacked").astype(bool)

    @property
    def success(self) -> np.ndarray:
        """Attacked rows whose target onnxruntime judged reached."""
        return self.column("success").astype(bool) & self.attacked

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.group["x"].shape[1:])

    @property
    def num_labels(self) -> int:
        return int(self.group["y_target"].shape[1])

    def json_attr(self, key: str, default: Any = None) -> Any:
        """A JSON attribute, decoded; BadInputError naming it when it is not JSON (a file edited by hand)."""
        raw = self.attrs.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            raise BadInputError(f"{self.path}: attribute {key} is not JSON ({str(raw)[:40]!r})") from None

    @property
    def labels(self) -> list[str]:
        return [str(name) for name in self.json_attr("labels", None) or range(self.num_labels)]

    @property
    def params(self) -> dict[str, Any]:
        return self.json_attr("params", {})

    def decoded(self) -> tuple[list[str], list[str], dict[str, Any]] | None:
        """A CTC run's greedy decodes (decoded/x, decoded/x_adv) and what they were decoded with; None
        when the file has none."""
        group = self.group.get(DECODED_GROUP)
        if not isinstance(group, h5py.Group) or not {"x", "x_adv"} <= set(group):
            return None
        texts = [[value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                  for value in group[name][:]] for name in ("x", "x_adv")]
        return texts[0], texts[1], {key: plain(value) for key, value in group.attrs.items()}

    def given_inputs(self) -> dict[str, np.ndarray]:
        """The inputs given once (given/<name>: --set, --broadcast), by input name; empty when none."""
        group = self.group.get(GIVEN_GROUP)
        if not isinstance(group, h5py.Group):
            return {}
        return {passthrough_name(key): np.asarray(value[()]) for key, value in group.items()
                if isinstance(value, h5py.Dataset) and value.dtype.kind in "biuf"}

    def passthrough_names(self) -> list[str]:
        """The input names stored under inputs/ (a multi-input model's other inputs)."""
        group = self.group.get(PASSTHROUGH_GROUP)
        return [passthrough_name(key) for key in group] if isinstance(group, h5py.Group) else []

    def passthrough(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.column(passthrough_dataset(name), start, stop)

    def row_datasets(self) -> tuple[str, ...]:
        """Every per-row dataset this file holds: the row columns and the pass-through inputs/<name>."""
        return tuple(name for name in ROW_DATASETS if name in self.group) + tuple(
            passthrough_dataset(name) for name in self.passthrough_names())

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (row shape, dtype) of every row dataset."""
        return {name: (tuple(self.group[name].shape[1:]), str(self.group[name].dtype)) for name in self.row_datasets()}

    def learnt(self) -> tuple[np.ndarray, int] | None:
        """What a set attack learnt and the model calls per row it took, if this file holds it."""
        if LEARNT_DATASET not in self.group:
            return None
        dataset = self.group[LEARNT_DATASET]
        return np.asarray(dataset), int(dataset.attrs.get("model_calls", 0))

    # --- transfer ---------------------------------------------------------------------------------
    def transfers(self) -> dict[str, dict[str, Any]]:
        """transfer/<model> groups: name -> their attributes (plain values)."""
        group = self.group.get(TRANSFER_GROUP)
        if not isinstance(group, h5py.Group):
            return {}
        return {name: {key: plain(value) for key, value in sub.attrs.items()} for name, sub in group.items()}

    def transfer_column(self, model: str, name: str) -> np.ndarray:
        return np.asarray(self.group[f"{TRANSFER_GROUP}/{model}/{name}"][: self.rows])


class CurveFile:
    """A curve file: its attributes, the curve's points, and each epsilon's run as a ResultFile."""

    def __init__(self, handle: h5py.File, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.attrs = {key: plain(value) for key, value in handle.attrs.items()}
        if self.attrs.get("kind") != "curve":
            handle.close()
            raise BadInputError(f"{path} is not a curve file (written by `onnxattack curve`)")

    @classmethod
    def open(cls, path: str | os.PathLike) -> CurveFile:
        return cls(open_hdf5(path, what="curve file"), Path(path))

    @staticmethod
    def is_curve(path: str | os.PathLike) -> bool:
        with open_hdf5(path) as handle:
            return plain(handle.attrs.get("kind")) == "curve"

    def __enter__(self) -> CurveFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def points(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.attrs["curve"]))
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"{self.path}: its 'curve' attribute is missing or not JSON") from None

    def epsilons(self) -> list[str]:
        group = self.handle.get(EPS_GROUP)
        return list(group) if isinstance(group, h5py.Group) else []

    def run(self, eps: str) -> ResultFile:
        """The run at epsilon `eps` (as written in the group name, e.g. '0.05')."""
        key = f"{EPS_GROUP}/{eps}"
        if key not in self.handle:
            raise BadInputError(f"{self.path} holds no run at eps {eps} (it has: {', '.join(self.epsilons())})")
        return ResultFile(self.handle[key], self.path)
