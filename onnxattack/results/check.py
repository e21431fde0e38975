"""A crosscheck file (`onnxattack crosscheck`): one model, every deployment of it, in one matrix.

Layout (names in schema.py):
- root: `x` (the clean inputs, in the reference's input format); attributes kind="crosscheck",
  `models` (JSON list, the matrices' order), `reference`, `labels` (the reference's), `method`, `target`,
  `created`, `complete`;
- models/<name>: attributes (path, sha256, role, input_mapping, label_match, attacked, reason);
  `scores` (N, L) float32 and `y_pred` (N, L) int8, onnxruntime's on the clean inputs, in the reference's
  label order (NaN / -1 where the model lacks a label); `run`: the model's own attack, a whole result
  file (its rows in the model's own input format), with transfer/<other> groups: the other models'
  verdicts on its x_adv;
- agreement: `equal` (K, K) the share of inputs whose predicted label sets are equal on the shared
  labels, `max_score_diff` (K, K) the largest |score difference| on them;
- transfer: `success` (K, K), row i = adversarial inputs crafted on model i, column j = judged on model j
  (the diagonal: each model's own success; NaN where model i could not be attacked);
- disagree/<A>:<B> (crosscheck --disagree A:B; root attribute `pairs`, a JSON list of the names): the
  disagreement search of the pair, rows in the reference's input format: `x_adv`, `l2`, `linf`, `success`
  (onnxruntime: A's and B's predicted label sets differ on x_adv, on the labels they share),
  `clean_disagree` (they differ already on x: x_adv = x), `torch_success`, `y_a`, `y_b` (onnxruntime's
  predictions on x_adv in the reference's label order, -1 where a model lacks the label), `iterations`,
  `model_calls`; attributes `a`, `b`, `shared_labels`, `success_rate`, `mean_l2`, `median_l2`,
  `mean_linf` (over the successful rows), `method`, `params`, `gradients_a`, `gradients_b`, `reason`.
The file is gathered under a temporary name and renamed into place once whole. A disagreement search in
progress is a part file (`write_pair_part`, `read_pair_part`) until the check is whole.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadInputError
from ..inputs import checked_hdf5_dataset
from .reader import ResultFile, open_hdf5, plain
from .schema import AGREEMENT_GROUP, CHECK_KIND, DISAGREE_GROUP, MODELS_GROUP, PAIR_ROWS, TRANSFER_GROUP


class CheckWriter:
    """Gathers a crosscheck file under OUT.gathering; `finish` renames it into place."""

    def __init__(self, out: Path, x: np.ndarray, attrs: dict[str, Any]) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".gathering")
        try:
            self.handle = h5py.File(self.partial, "w")
            self.handle.create_dataset("x", data=x, compression="gzip")
            self.handle.attrs.update({**attrs, "kind": CHECK_KIND, "complete": False,
                                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        except OSError as exc:
            self.partial.unlink(missing_ok=True)
            raise BadInputError(f"cannot write the crosscheck file {out}: {exc.strerror or exc}") from None

    def add_model(self, name: str, attrs: dict[str, Any], scores: np.ndarray, y_pred: np.ndarray,
                  run: Path | None) -> None:
        """models/<name>: its clean verdicts and, when it was attacked, its whole run file as `run`."""
        group = self.handle.create_group(f"{MODELS_GROUP}/{name}")
        group.attrs.update(attrs)
        group.create_dataset("scores", data=scores.astype(np.float32), compression="gzip")
        group.create_dataset("y_pred", data=y_pred.astype(np.int8), compression="gzip")
        if run is not None:
            with open_hdf5(run) as source:
                source.copy(source["/"], group, name="run")

    def write_matrices(self, equal: np.ndarray, max_diff: np.ndarray, success: np.ndarray) -> None:
        self.handle.create_dataset(f"{AGREEMENT_GROUP}/equal", data=equal)
        self.handle.create_dataset(f"{AGREEMENT_GROUP}/max_score_diff", data=max_diff)
        self.handle.create_dataset(f"{TRANSFER_GROUP}/success", data=success)

    def add_pair(self, name: str, attrs: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
        """disagree/<name>: one pair's disagreement search (rows: PAIR_ROWS, empty when it did not run)."""
        _write_pair(self.handle.create_group(f"{DISAGREE_GROUP}/{name}"), attrs, rows)
        names = json.loads(str(self.handle.attrs.get("pairs", "[]")))
        self.handle.attrs["pairs"] = json.dumps([*names, name])

    def finish(self) -> Path:
        self.handle.attrs["complete"] = True
        self.handle.close()
        os.replace(self.partial, self.out)
        return self.out

    def abandon(self) -> None:
        if self.handle.id.valid:
            self.handle.close()
        self.partial.unlink(missing_ok=True)


def _write_pair(group: h5py.Group, attrs: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
    unknown = set(rows) - set(PAIR_ROWS)
    if unknown:
        raise ValueError(f"not rows of a disagreement search: {sorted(unknown)}")
    group.attrs.update(attrs)
    for name in PAIR_ROWS:
        if name in rows:
            group.create_dataset(name, data=np.asarray(rows[name]), compression="gzip")


def write_pair_part(path: Path, attrs: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
    """A finished disagreement search kept as a part file until the check is whole (written under a
    temporary name, then renamed: a part that exists is complete)."""
    partial = path.with_name(path.name + ".writing")
    with h5py.File(partial, "w") as handle:
        _write_pair(handle, attrs, rows)
    os.replace(partial, path)


def read_pair_part(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(attrs, rows) of a part written by write_pair_part."""
    with open_hdf5(path, what="disagreement part file") as handle:
        return _read_pair(handle)


def _read_pair(group: h5py.Group) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    attrs = {key: plain(value) for key, value in group.attrs.items()}
    where = str(group.file.filename)
    return attrs, {name: np.asarray(checked_hdf5_dataset(group.file, f"{group.name}/{name}", where))
                   for name in PAIR_ROWS if name in group}


class CheckFile:
    """A crosscheck file read back: its models, their clean verdicts and runs, and the two matrices."""

    def __init__(self, handle: h5py.File, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.attrs = {key: plain(value) for key, value in handle.attrs.items()}
        if self.attrs.get("kind") != CHECK_KIND:
            handle.close()
            raise BadInputError(f"{path} is not a crosscheck file (written by `onnxattack crosscheck`)")

    @classmethod
    def open(cls, path: str | os.PathLike) -> CheckFile:
        return cls(open_hdf5(path, what="crosscheck file"), Path(path))

    def __enter__(self) -> CheckFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    @property
    def models(self) -> list[str]:
        return list(json.loads(self.attrs["models"]))

    def model_attrs(self, name: str) -> dict[str, Any]:
        return {key: plain(value) for key, value in self.handle[f"{MODELS_GROUP}/{name}"].attrs.items()}

    def _array(self, name: str) -> np.ndarray:
        """A dataset's values, once it is checked to be plain data stored in this file (as ResultFile.open
        checks its rows): a hostile check file must not pull another file's bytes into a report."""
        return np.asarray(checked_hdf5_dataset(self.handle, name, str(self.path)))

    def clean(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores, y_pred) of the clean inputs, in the reference's label order."""
        group = f"{MODELS_GROUP}/{name}"
        return self._array(f"{group}/scores"), self._array(f"{group}/y_pred")

    def run(self, name: str) -> ResultFile | None:
        """The model's own attack (None when it could not be attacked)."""
        key = f"{MODELS_GROUP}/{name}/run"
        if key not in self.handle:
            return None
        results = ResultFile(self.handle[key], self.path)
        results.check_storage()
        return results

    @property
    def pairs(self) -> list[str]:
        """The pairs a disagreement search ran on, as `A:B` (none when the check asked for none)."""
        return list(json.loads(str(self.attrs.get("pairs", "[]"))))

    def pair(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(attributes, per-row datasets) of the pair's disagreement search."""
        return _read_pair(self.handle[f"{DISAGREE_GROUP}/{name}"])

    def matrices(self) -> dict[str, np.ndarray]:
        return {"agreement": self._array(f"{AGREEMENT_GROUP}/equal"),
                "max_score_diff": self._array(f"{AGREEMENT_GROUP}/max_score_diff"),
                "transfer": self._array(f"{TRANSFER_GROUP}/success")}
