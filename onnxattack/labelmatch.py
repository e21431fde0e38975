"""Labels matched by name between a reference model and another one.

The reference's label j and the other model's label k are the same label when a label map (`--label-map
FILE`: a JSON object, reference name -> other name) pairs them, or when their names are equal (also for a
map entry naming a label this model lacks: one map serves several models). Matching by
position is used only when asked for (`--match-labels-by-position`) and then needs equal counts. Labels
on one side only are reported and left out of every verdict: success is judged on the shared labels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError


@dataclass(frozen=True)
class LabelMatch:
    """Pairs (reference index, other index) in the reference's order, and the labels left out."""

    reference: tuple[int, ...]
    other: tuple[int, ...]
    reference_only: tuple[str, ...]
    other_only: tuple[str, ...]
    how: str  # "names", "label map", "position"
    pairs: tuple[tuple[str, str], ...]

    @property
    def complete(self) -> bool:
        """Every label of both sides is matched."""
        return not self.reference_only and not self.other_only

    @property
    def identity(self) -> bool:
        return self.complete and self.reference == self.other

    def other_columns(self, values: np.ndarray) -> np.ndarray:
        """The other model's [N, L_other] columns of the shared labels, in the reference's order."""
        return np.asarray(values)[:, list(self.other)]

    def reference_columns(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)[:, list(self.reference)]

    def in_reference_space(self, values: np.ndarray, fill: float | int) -> np.ndarray:
        """Shared-label columns [N, shared] (as `other_columns` gives them) -> [N, L_reference]: each in its
        reference place, `fill` where the other model lacks the label."""
        values = np.asarray(values)
        out = np.full((len(values), self.reference_size), fill, dtype=values.dtype)
        out[:, list(self.reference)] = values
        return out

    @property
    def reference_size(self) -> int:
        return len(self.reference) + len(self.reference_only)

    def describe(self) -> str:
        """One line: how many labels are shared, and which are on one side only."""
        line = f"{len(self.pairs)} labels matched by {self.how}"
        if self.reference_only:
            line += f"; only in the reference (left out): {', '.join(self.reference_only)}"
        if self.other_only:
            line += f"; only in the other model (left out): {', '.join(self.other_only)}"
        return line

    def to_json(self) -> str:
        return json.dumps({"how": self.how, "pairs": [list(pair) for pair in self.pairs],
                           "reference_only": list(self.reference_only), "other_only": list(self.other_only)})


def read_label_map(path: str | os.PathLike | None) -> dict[str, str]:
    """A JSON object of label names (reference -> other model); {} without a file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"label map not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"label map {path} is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, (str, int)) for v in raw.values()):
        raise BadInputError(f"label map {path} must be a JSON object of label names (reference -> other model)")
    targets = [str(value) for value in raw.values()]
    if len(set(targets)) != len(targets):
        raise BadInputError(f"label map {path} maps two reference labels onto one label")
    return {str(key): str(value) for key, value in raw.items()}


def match_labels(reference: list[str], other: list[str], label_map: dict[str, str] | None = None,
                 by_position: bool = False, other_name: str = "the other model") -> LabelMatch:
    """Match the other model's labels to the reference's; BadInputError when nothing is shared."""
    if by_position:
        if len(reference) != len(other):
            raise BadInputError(f"--match-labels-by-position: the reference has {len(reference)} labels, "
                                f"{other_name} has {len(other)}")
        indices = tuple(range(len(reference)))
        return LabelMatch(indices, indices, (), (), "position", tuple(zip(reference, other, strict=True)))
    label_map = label_map or {}
    unknown = sorted(set(label_map) - set(reference))
    if unknown:
        raise BadInputError(f"the label map names {', '.join(unknown[:5])}, not labels of the reference")
    where = {name: index for index, name in enumerate(other)}
    pairs, ref_idx, other_idx = [], [], []
    for index, name in enumerate(reference):
        wanted = label_map.get(name, name)
        wanted = wanted if wanted in where else name  # a map entry this model does not use: its own name
        if wanted in where:
            pairs.append((name, wanted))
            ref_idx.append(index)
            other_idx.append(where[wanted])
    if not pairs:
        raise BadInputError(f"no label of {other_name} matches the reference's by name (reference: "
                            f"{', '.join(reference[:4])}...; {other_name}: {', '.join(other[:4])}...); pass "
                            f"--label-map FILE or --match-labels-by-position")
    matched_other = set(other_idx)
    return LabelMatch(tuple(ref_idx), tuple(other_idx),
                      tuple(name for i, name in enumerate(reference) if i not in set(ref_idx)),
                      tuple(name for i, name in enumerate(other) if i not in matched_other),
                      "label map" if any(a != b for a, b in pairs) else "names", tuple(pairs))
