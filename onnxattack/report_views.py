"""What the report pages show, read from a result file or a crosscheck file (through `results/` only).

A result file gives one run: its summary, its settings and example rows, each judged by the run's model
and by every model `validate` stored a transfer group for. A crosscheck file gives its matrices, every
model's input mapping and label matching, and per model that was attacked the same view of its run,
the other models' verdicts being the pairs of the transfer matrix. The file is input: a value of the
wrong type or a missing group (a file edited by hand) is a BadInputError in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .labelmatch import LabelMatch
from .report import summarize_run
from .results import TRANSFER_GROUP, CheckFile, ResultFile, open_hdf5, plain
from .results.schema import CHECK_KIND

CleanOf = Callable[[str, int], tuple[np.ndarray, np.ndarray] | None]


@dataclass(frozen=True)
class Verdict:
    """One model's verdict on one example, in the example's label order (NaN / -1 where it lacks a label)."""

    model: str
    adv_scores: np.ndarray
    adv_pred: np.ndarray
    reached: bool
    clean_scores: np.ndarray | None = None  # None: not stored (validate keeps only the adversarial verdict)
    clean_pred: np.ndarray | None = None


@dataclass(frozen=True)
class Example:
    """One attacked row: the inputs in the crafting model's own format and every model's verdict on it."""

    index: int
    x: np.ndarray
    x_adv: np.ndarray
    target: np.ndarray
    l2: float
    linf: float
    verdicts: list[Verdict]  # the crafting model's first


@dataclass(frozen=True)
class RunView:
    """One run: the figures of `report`, the settings it was made with, and example rows."""

    name: str
    labels: list[str]
    summary: dict[str, Any]
    settings: dict[str, Any]
    examples: list[Example]
    l2_success: np.ndarray


@dataclass(frozen=True)
class MemberView:
    """One model of a crosscheck, as stored under models/<name>."""

    name: str
    role: str
    path: str
    sha256: str
    attacked: bool
    reason: str
    mapping: dict[str, Any]
    label_match: dict[str, Any]
    run: RunView | None = None


@dataclass(frozen=True)
class CheckView:
    path: str
    attrs: dict[str, Any]
    labels: list[str]
    members: list[MemberView]
    agreement: np.ndarray
    max_score_diff: np.ndarray
    transfer: np.ndarray


def is_crosscheck(path: str | os.PathLike) -> bool:
    """The file says it is a crosscheck file (its root attribute kind)."""
    with open_hdf5(path) as handle:
        return plain(handle.attrs.get("kind")) == CHECK_KIND


def _json(value: Any, kind: type | tuple[type, ...], default: Any) -> Any:
    """A JSON attribute decoded to `kind`, or `default` when it is missing, not JSON or of another type."""
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return default
    return decoded if isinstance(decoded, kind) else default


def _settings(attrs: dict[str, Any]) -> dict[str, Any]:
    """A run's attributes as shown: JSON ones decoded, the per-row bookkeeping left out."""
    skipped = {"labels", "stall_reasons", "rows_written", "layout_version"}
    shown: dict[str, Any] = {}
    for key, value in sorted(attrs.items()):
        if key in skipped:
            continue
        decoded = _json(value, (dict, list), None) if isinstance(value, str) and value[:1] in "[{" else None
        shown[key] = value if decoded is None else decoded
    return shown


def _flags(values: np.ndarray) -> np.ndarray:
    """A label row (1 on, 0 off, -1 not known) as int8 whatever it was stored as (NaN and junk: -1)."""
    numbers = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint(numbers), -1, 1).astype(np.int8)


def _floats(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)  # a ValueError for text: read_* turn it into one line


def pick_rows(attacked: np.ndarray, success: np.ndarray, carried: np.ndarray | None, count: int) -> list[int]:
    """Successes first, and among them those that carried over to the fewest other models (the pairs that
    differ are the interesting ones); then failures; skipped rows are never shown."""
    rows = np.flatnonzero(attacked)
    held = carried[rows] if carried is not None else np.zeros(len(rows))
    order = np.lexsort((rows, held, ~success[rows]))
    return [int(row) for row in rows[order][:count]]


def read_run(run: ResultFile, name: str, count: int, judges: list[str] | None = None,
             clean_of: CleanOf | None = None) -> RunView:
    """A run's view: its summary and settings, and `count` example rows judged by its own model and by each
    model of `judges` (default: every transfer group, as `validate` wrote them)."""
    groups = run.transfers()
    judges = [judge for judge in (judges if judges is not None else list(groups)) if judge in groups]
    attacked, success = run.attacked, run.success
    reached = {judge: run.transfer_column(judge, "success").astype(bool) for judge in judges}
    carried = np.sum([reached[judge] for judge in judges], axis=0) if judges else None
    l2, linf = run.column("l2").astype(np.float64), run.column("linf").astype(np.float64)
    examples = []
    for row in pick_rows(attacked, success, carried, count):
        own_clean = (_floats(run.take("scores", row)), _flags(run.take("y_pred", row)))
        verdicts = [Verdict(name, _floats(run.take("scores_adv", row)), _flags(run.take("y_adv", row)),
                            bool(success[row]), *own_clean)]
        for judge in judges:
            adv_scores = _floats(run.dataset(f"{TRANSFER_GROUP}/{judge}/scores_adv")[row])
            adv_pred = _flags(run.dataset(f"{TRANSFER_GROUP}/{judge}/y_adv")[row])
            clean = clean_of(judge, row) if clean_of else None
            verdicts.append(Verdict(judge, adv_scores, adv_pred, bool(reached[judge][row]),
                                    *(clean if clean is not None else (None, None))))
        examples.append(Example(row, _floats(run.take("x", row)), _floats(run.take("x_adv", row)),
                                _flags(run.take("y_target", row)), float(l2[row]), float(linf[row]), verdicts))
    return RunView(name, run.labels, summarize_run(run), _settings(run.attrs), examples, l2[success])


# What h5py and numpy raise on a group or dataset that is not what the layout says (a file edited by hand).
_DAMAGE = (KeyError, ValueError, TypeError, IndexError, OSError)


def _unreadable(path: str | os.PathLike, what: str, exc: Exception) -> BadInputError:
    detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BadInputError(f"{path} cannot be read as a {what} ({detail})")


def read_result(path: str | os.PathLike, count: int) -> RunView:
    """An ordinary result file's view."""
    with ResultFile.open(path) as run:
        try:
            return read_run(run, str(run.attrs.get("model_name") or Path(path).stem), count)
        except _DAMAGE as exc:
            raise _unreadable(path, "result file", exc) from None


def read_check(path: str | os.PathLike, count: int) -> CheckView:
    """A crosscheck file's view; `count` example rows per attacked model."""
    with CheckFile.open(path) as check:
        try:
            return _check_view(check, count)
        except BadInputError:
            raise
        except _DAMAGE as exc:
            raise _unreadable(path, "crosscheck file", exc) from None


def _names(check: CheckFile) -> tuple[list[str], list[str]]:
    models = _json(check.attrs.get("models"), list, None)
    if not models or not all(isinstance(name, str) for name in models):
        raise BadInputError(f"{check.path}: attribute models is not a JSON list of names")
    labels = _json(check.attrs.get("labels"), list, [])
    return models, [str(label) for label in labels]


def _square(check: CheckFile, size: int) -> dict[str, np.ndarray]:
    matrices = {key: matrix for key, matrix in check.matrices().items()  # later additions are not drawn here
                if key in ("agreement", "max_score_diff", "transfer")}
    for key, matrix in matrices.items():
        if matrix.shape != (size, size) or matrix.dtype.kind not in "fiu":
            raise BadInputError(f"{check.path}: the {key} matrix has shape {list(matrix.shape)}, not "
                                f"[{size}, {size}] for its {size} models")
    return {key: matrix.astype(np.float64) for key, matrix in matrices.items()}


def _to_run_order(scores: np.ndarray, pred: np.ndarray, reference: list[str], run_labels: list[str],
                  pairs: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """One clean row in the reference's label order -> the run's label order (through the run's model's
    label matching: reference name -> its name); NaN / -1 where a label has no reference counterpart."""
    own_to_reference = {own: ref for ref, own in pairs.items()}
    where = {name: i for i, name in enumerate(reference)}
    out_scores, out_pred = np.full(len(run_labels), np.nan), np.full(len(run_labels), -1, dtype=np.int8)
    for k, name in enumerate(run_labels):
        i = where.get(own_to_reference.get(name, ""))
        if i is not None and i < len(scores):
            out_scores[k], out_pred[k] = scores[i], pred[i]
    return out_scores, out_pred


def _check_view(check: CheckFile, count: int) -> CheckView:
    models, labels = _names(check)
    matrices = _square(check, len(models))
    clean = {name: check.clean(name) for name in models}
    members = []
    for name in models:
        attrs = check.model_attrs(name)
        match = _json(attrs.get("label_match"), dict, {})
        pairs = {str(pair[0]): str(pair[1]) for pair in match.get("pairs", [])
                 if isinstance(pair, list) and len(pair) == 2}
        run_view = None
        run = check.run(name)
        if run is not None:
            run_labels = run.labels

            def clean_of(judge: str, row: int, run_labels: list[str] = run_labels,
                         pairs: dict[str, str] = pairs) -> tuple[np.ndarray, np.ndarray] | None:
                scores, pred = clean[judge]
                if row >= len(scores):
                    return None
                return _to_run_order(_floats(scores[row]), _flags(pred[row]), labels, run_labels, pairs)

            judges = [other for other in models if other != name]
            run_view = read_run(run, name, count, judges, clean_of)
        members.append(MemberView(name, str(attrs.get("role", "")), str(attrs.get("path", "")),
                                  str(attrs.get("sha256", "")), bool(attrs.get("attacked", run is not None)),
                                  str(attrs.get("reason", "")), _json(attrs.get("input_mapping"), dict, {}),
                                  match, run_view))
    return CheckView(str(check.path), dict(check.attrs), labels, members, matrices["agreement"],
                     matrices["max_score_diff"], matrices["transfer"])


def describe_match(match: dict[str, Any]) -> str:
    """The stored label matching in LabelMatch.describe's words."""
    pairs = tuple((str(a), str(b)) for a, b in (p for p in match.get("pairs", []) if isinstance(p, list)
                                                 and len(p) == 2))
    return LabelMatch((), (), tuple(map(str, match.get("reference_only", []))),
                      tuple(map(str, match.get("other_only", []))), str(match.get("how", "?")), pairs).describe()


def _listed(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(value) else round(float(value), 6) for value in row] for row in matrix]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize_check(view: CheckView) -> dict[str, Any]:
    """The summary `crosscheck` printed when it wrote the file (format_crosscheck prints it again)."""
    return {"path": view.path, "models": [member.name for member in view.members],
            "roles": [member.role for member in view.members], "inputs": _count(view.attrs.get("n_inputs")),
            "agreement": _listed(view.agreement), "max_score_diff": _listed(view.max_score_diff),
            "transfer": _listed(view.transfer),
            "mappings": {member.name: str(member.mapping.get("description", "?")) for member in view.members},
            "labels": {member.name: describe_match(member.label_match) for member in view.members},
            "not_attacked": {member.name: member.reason or "no run stored" for member in view.members
                             if member.run is None}}
