"""The disagreement search of a crosscheck (`crosscheck --disagree A:B`): for a pair of its members, the
smallest perturbation of each input after which A and B predict different label sets (attacks/disagree.py),
judged by onnxruntime on both original files.

The rows are perturbed in the reference's input format and mapped into each member's input by its
adapter (adapt.py, differentiably for the search); labels are those both members match to the reference
(labelmatch.py). Each member is loaded with gradients: its torch graph where it converts (an int8 QDQ
build does: bridge/converters/quantize.py), else gradients estimated from onnxruntime queries. Inputs the
pair already disagrees on are not searched (x_adv = x, L2 0). A finished search is kept as a part file
(OUT.parts/<A>~<B>.disagree.h5, its settings noted beside it) that --resume reuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .attacks import PAIR_METHODS, PairAttack, PairVictim
from .config import AttackConfig
from .errors import BadInputError, UnsupportedModelError, first_line
from .loader import LoadedModel, LoadSettings, load
from .model import open_model
from .results import read_pair_part, write_pair_part
from .scores import criterion_for
from .transfer import ReadAs
from .types import Task

if TYPE_CHECKING:
    from .crosscheck import Member

__all__ = ["PairOutcome", "member_decisions", "parse_pairs", "run_pair", "shared_labels"]
CHUNK = 256


@dataclass
class PairOutcome:
    """One pair's search: its attributes (what the check file stores and the summary prints) and rows."""

    name: str
    attrs: dict[str, Any]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        keys = ("a", "b", "success_rate", "mean_l2", "median_l2", "mean_linf", "clean_disagreement",
                "gradients_a", "gradients_b", "reason")
        return {key: _plain(self.attrs.get(key)) for key in keys}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    return round(value, 6) if isinstance(value, float) else value


def parse_pairs(specs: list[str], names: list[str]) -> list[tuple[int, int]]:
    """`A:B` member names -> (index of A, index of B); an unknown name, a malformed pair or a member paired
    with itself is BadInputError naming the members."""
    pairs: list[tuple[int, int]] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 2 or not all(parts):
            raise BadInputError(f"--disagree {spec!r}: give a pair as A:B, two member names "
                                f"(members: {', '.join(names)})")
        unknown = [part for part in parts if part not in names]
        if unknown:
            raise BadInputError(f"--disagree {spec}: no member named {unknown[0]!r} (members: {', '.join(names)})")
        if parts[0] == parts[1]:
            raise BadInputError(f"--disagree {spec}: a model always agrees with itself; name two members")
        pair = (names.index(parts[0]), names.index(parts[1]))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def shared_labels(a: Member, b: Member) -> list[str]:
    """The reference's label names both members match (the labels the pair is compared on)."""
    in_b = {name for name, _ in b.match.pairs}
    shared = [name for name, _ in a.match.pairs if name in in_b]
    if not shared:
        raise BadInputError(f"--disagree {a.name}:{b.name}: the two models share no label ({a.name}: "
                            f"{a.match.describe()}; {b.name}: {b.match.describe()})")
    return shared


def member_decisions(member: Member, loaded: LoadedModel, x: np.ndarray, task: Task, top_k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's scores and predictions of reference rows x on a member, in the reference's label
    order (NaN / -1 where the member lacks a label)."""
    criterion = criterion_for(task, loaded.reader, top_k)
    scores = np.concatenate([loaded.ort_scores(member.adapter(x[start:start + CHUNK]))
                             for start in range(0, len(x), CHUNK)])
    shared = member.match.other_columns(scores)
    return (member.match.in_reference_space(shared.astype(np.float32), np.nan),
            member.match.in_reference_space(criterion.predict(shared).astype(np.int8), -1))


def differ(y_a: np.ndarray, y_b: np.ndarray) -> np.ndarray:
    """Per row: the predicted label sets differ on the labels both models have (-1: a label one lacks)."""
    both = (y_a >= 0) & (y_b >= 0)
    return ((y_a != y_b) & both).any(axis=1)


def _columns(member: Member, labels: list[str]) -> torch.Tensor:
    """The member's own score column of each shared label."""
    column = {reference: other for (reference, _), other in zip(member.match.pairs, member.match.other, strict=True)}
    return torch.as_tensor([column[name] for name in labels], dtype=torch.long)


def _load(member: Member, x: np.ndarray, config: AttackConfig, read_as: ReadAs) -> LoadedModel:
    """The member with a gradient source: its torch graph, else estimated gradients (unless --gradients torch)."""
    settings = LoadSettings(device=config.device, box=member.adapter.target, scores=read_as.scores,
                            threshold=read_as.threshold, gradients=config.gradients, tolerance=config.tolerance,
                            max_queries=config.max_queries, seed=config.seed,
                            labels_file=config.labels_file if member.role != "model" else None)
    return load(open_model(member.arg.path), settings, probe=member.adapter(x[:4]))


def identity(a: Member, b: Member, method: PairAttack, config: AttackConfig, read_as: ReadAs, rows: int) -> str:
    """What a finished pair part must have been run with to be reused."""
    return json.dumps({"a": a.sha256, "b": b.sha256, "rows": rows, "method": method.name, "params": method.params(),
                       "device": config.device, "gradients": config.gradients, "batch_size": config.batch_size,
                       "seed": config.seed, "scores": read_as.scores, "threshold": read_as.threshold},
                      sort_keys=True, default=str)


def run_pair(a: Member, b: Member, x: np.ndarray, box: tuple[float, float], method: PairAttack,
             config: AttackConfig, read_as: ReadAs, parts: Path,
             on_pair: Callable[[str], None] | None = None) -> PairOutcome:
    """The disagreement search of (a, b) on the reference rows x, reused from its part file when a finished
    one with the same settings is there (--resume)."""
    name = f"{a.name}:{b.name}"
    labels = shared_labels(a, b)
    part = parts / f"{a.name}~{b.name}.disagree.h5"
    note = part.with_suffix(".identity.json")
    wanted = identity(a, b, method, config, read_as, len(x))
    if config.resume and part.exists() and note.exists() and note.read_text(encoding="utf-8") == wanted:
        attrs, rows = read_pair_part(part)
        return PairOutcome(name, attrs, rows)
    if on_pair:
        on_pair(name)
    outcome = _search(name, a, b, labels, x, box, method, config, read_as)
    write_pair_part(part, outcome.attrs, outcome.rows)
    note.write_text(wanted, encoding="utf-8")
    return outcome


def _search(name: str, a: Member, b: Member, labels: list[str], x: np.ndarray, box: tuple[float, float],
            method: PairAttack, config: AttackConfig, read_as: ReadAs) -> PairOutcome:
    attrs: dict[str, Any] = {"a": a.name, "b": b.name, "shared_labels": json.dumps(labels), "method": method.name,
                             "params": json.dumps(method.params()), "inputs": len(x)}
    try:
        loaded_a, loaded_b = _load(a, x, config, read_as), _load(b, x, config, read_as)
    except UnsupportedModelError as exc:
        return PairOutcome(name, {**attrs, "reason": first_line(exc), "success_rate": float("nan"),
                                  "mean_l2": float("nan"), "median_l2": float("nan"), "mean_linf": float("nan"),
                                  "clean_disagreement": float("nan"), "gradients_a": "", "gradients_b": ""})
    top_k = read_as.top_k or config.top_k or 1
    _, clean_a = member_decisions(a, loaded_a, x, Task.CLASSIFICATION, top_k)
    _, clean_b = member_decisions(b, loaded_b, x, Task.CLASSIFICATION, top_k)
    clean = differ(clean_a, clean_b)
    pair = PairVictim(loaded_a.victim(), loaded_b.victim(), a.adapter.on_tensor, b.adapter.on_tensor,
                      _columns(a, labels), _columns(b, labels), box)
    x_adv = x.copy()
    torch_success = clean.copy()
    iterations = np.zeros(len(x), dtype=np.int64)
    calls = np.zeros(len(x), dtype=np.int64)
    searched = np.flatnonzero(~clean)
    device = loaded_a.device
    for start in range(0, len(searched), config.batch_size):
        rows = searched[start:start + config.batch_size]
        pair.begin(np.arange(len(rows)))
        result = method(pair, torch.as_tensor(x[rows], device=device))
        x_adv[rows] = result.x_adv.detach().cpu().numpy().astype(x.dtype)
        torch_success[rows] = result.success.cpu().numpy()
        iterations[rows] = result.iterations.cpu().numpy()
        calls[rows] = result.model_calls.cpu().numpy()
    _, y_a = member_decisions(a, loaded_a, x_adv, Task.CLASSIFICATION, top_k)
    _, y_b = member_decisions(b, loaded_b, x_adv, Task.CLASSIFICATION, top_k)
    success = differ(y_a, y_b)
    delta = (x_adv.astype(np.float64) - x).reshape(len(x), -1)
    l2, linf = np.linalg.norm(delta, axis=1), np.abs(delta).max(axis=1, initial=0.0)
    found = l2[success]
    attrs.update({"success_rate": float(success.mean()) if len(x) else float("nan"),
                  "mean_l2": float(found.mean()) if found.size else float("nan"),
                  "median_l2": float(np.median(found)) if found.size else float("nan"),
                  "mean_linf": float(linf[success].mean()) if found.size else float("nan"),
                  "clean_disagreement": float(clean.mean()) if len(x) else float("nan"),
                  "gradients_a": loaded_a.gradients, "gradients_b": loaded_b.gradients, "reason": ""})
    rows_out = {"x_adv": x_adv, "l2": l2, "linf": linf, "success": success, "clean_disagree": clean,
                "torch_success": torch_success, "y_a": y_a, "y_b": y_b, "iterations": iterations,
                "model_calls": calls}
    return PairOutcome(name, attrs, rows_out)


def pair_method(name: str, options: dict[str, Any]) -> PairAttack:
    """The pair method `name` with its hyperparameters (PAIR_METHODS)."""
    if name not in PAIR_METHODS:
        raise BadInputError(f"unknown pair method {name!r} (pair methods: {', '.join(PAIR_METHODS)})")
    return PAIR_METHODS[name](**options)
