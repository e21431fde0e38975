"""A result file as training data: a torch Dataset (and numpy batches) read lazily from HDF5.

    ds = onnxattack.open_dataset("adv.h5", split="both")   # clean and adversarial rows, successes only
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)

Each item is a dict: `x` (the clean input, or the adversarial one), `y` (the labels: the clean
prediction y_pred, or the `labels` array you give), `y_target`, `success`, `adv` (whether `x` is
adversarial), `index` (the input's row), plus any other row dataset named in `extra`. Only the
selection of rows is read up front; samples are read on demand, and every process (each DataLoader
worker) opens its own HDF5 handle.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import BadInputError
from .results import CurveFile, ResultFile
from .safety import atomic_write, check_plain_output

SPLITS = ("adv", "clean", "both")
_READ_ROWS = 4096


class ResultDataset(Dataset):
    """Rows of a result file as samples; see the module docstring. Build it with `open_dataset`."""

    def __init__(self, path: str | os.PathLike, split: str = "adv", only_success: bool = True,
                 extra: tuple[str, ...] = (), labels: np.ndarray | None = None) -> None:
        if split not in SPLITS:
            raise BadInputError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)})")
        self.path, self.split, self.extra = str(path), split, tuple(extra)
        with ResultFile.open(path) as results:
            known = results.row_datasets()
            unknown = [name for name in extra if name not in known]
            if unknown:
                raise BadInputError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(known)})")
            rows = results.rows
            keep = results.success if only_success else results.attacked
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 2 or len(labels) < rows:
                raise BadInputError(f"labels must be an (N, L) array with a row per input ({rows}), "
                                    f"got shape {list(labels.shape)}")
        self.labels = labels
        self.rows = np.flatnonzero(keep) if only_success else np.arange(rows)
        self._handle: ResultFile | None = None
        self._pid = -1

    @property
    def _views(self) -> tuple[bool, ...]:
        return {"adv": (True,), "clean": (False,), "both": (False, True)}[self.split]

    def __len__(self) -> int:
        return len(self.rows) * len(self._views)

    def _file(self) -> ResultFile:
        if self._handle is None or self._pid != os.getpid():  # a forked DataLoader worker opens its own
            self._handle = ResultFile.open(self.path)
            self._pid = os.getpid()
        return self._handle

    def read(self, rows: np.ndarray, adv: bool) -> dict[str, np.ndarray]:
        """The samples of the given (increasing) input rows, as numpy arrays."""
        results = self._file()
        rows = np.asarray(rows, dtype=np.int64)
        take: Any = rows if len(rows) != 1 else slice(int(rows[0]), int(rows[0]) + 1)
        sample = {
            "x": results.take("x_adv" if adv else "x", take),
            "y": self.labels[rows] if self.labels is not None else results.take("y_pred", take),
            "y_target": results.take("y_target", take),
            "success": results.take("success", take),
            "adv": np.full(len(rows), adv),
            "index": rows,
        }
        sample.update({name: results.take(name, take) for name in self.extra})
        return sample

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= item < len(self):
            raise IndexError(item)
        item %= len(self)
        adv = self._views[item // len(self.rows)]
        row = self.rows[item % len(self.rows)]
        return {name: torch.as_tensor(value[0]) for name, value in self.read(np.array([row]), adv).items()}

    def iter_numpy(self, batch_size: int = 256) -> Iterator[dict[str, np.ndarray]]:
        """Batches of samples as numpy arrays, in row order (clean then adversarial for split='both')."""
        for adv in self._views:
            for start in range(0, len(self.rows), batch_size):
                yield self.read(self.rows[start:start + batch_size], adv)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in range(len(self)):
            yield self[index]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, -1  # HDF5 handles do not cross processes
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None


def open_dataset(path: str | os.PathLike, split: str = "adv", only_success: bool = True,
                 extra: tuple[str, ...] = (), labels: np.ndarray | None = None) -> ResultDataset:
    """The rows of result file `path` as a torch Dataset.

    split: 'adv' (x = x_adv), 'clean' (x = x) or 'both' (each selected row twice: clean, then adversarial).
    only_success: keep only rows whose attack succeeded (judged by onnxruntime); else every row.
    extra: other row datasets to include in each sample (e.g. 'l2', 'scores_adv').
    labels: an (N, L) array of true labels by input row, used as `y` instead of the clean prediction.
    `iter_numpy(batch_size)` gives the same samples as numpy batches without torch's DataLoader.
    """
    return ResultDataset(path, split=split, only_success=only_success, extra=extra, labels=labels)


def export_npz(results: str | os.PathLike, out: str | os.PathLike, only_success: bool = False,
               overwrite: bool = False, eps: str | None = None) -> tuple[Path, int]:
    """Write every row dataset of `results` (or only the successful rows) to a compressed .npz, with
    `index` (input rows), `attrs` (the root attributes as JSON) and each transfer group's columns as
    `transfer/<model>/<column>`; returns the path and the row count. A curve file needs `eps`: the
    epsilon whose run is exported (as its group is named, e.g. '0.05')."""
    out = check_plain_output(out, (".npz",), inputs=(results,), overwrite=overwrite, what="export")
    with _open_run(results, eps) as run:
        attrs = run.attrs
        keep = run.success if only_success else np.ones(run.rows, dtype=bool)
        arrays: dict[str, Any] = {name: run.column(name)[keep] for name in run.row_datasets()}
        for model in run.transfers():
            for column in ("scores_adv", "y_adv", "success"):
                arrays[f"transfer/{model}/{column}"] = run.transfer_column(model, column)[keep]
    arrays["index"] = np.flatnonzero(keep)
    arrays["attrs"] = np.array(json.dumps(attrs, default=str))
    try:
        with atomic_write(out) as temp, open(temp, "wb") as stream:  # never a half file at `out`
            np.savez_compressed(stream, **arrays)
    except OSError as exc:
        raise BadInputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out, int(keep.sum())


@contextlib.contextmanager
def _open_run(path: str | os.PathLike, eps: str | None) -> Iterator[ResultFile]:
    """The run of a result file, or of one epsilon of a curve file."""
    if not CurveFile.is_curve(path):
        if eps is not None:
            raise BadInputError(f"{path} is not a curve file: --eps applies to curve files only")
        with ResultFile.open(path) as run:
            yield run
        return
    with CurveFile.open(path) as curve:
        if eps is None:
            raise BadInputError(f"{path} is a curve file: name the run to export with --eps (one of: "
                                f"{', '.join(curve.epsilons())})")
        yield curve.run(eps)
