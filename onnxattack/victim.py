"""What an attack sees of a model: a differentiable attack tensor, how to read it, the valid box."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .scores import ScoreReader

# (x [m, ...], which rows of the attacked batch they are [m]) -> (attack-space scores [m, L], J [m, L, d])
JacobianFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# the reference's rows -> one member's input rows, differentiably (adapt.Adapter.on_tensor)
InputMap = Callable[[torch.Tensor], torch.Tensor]
# rows of the attacked batch -> a block inside which calls send exactly those rows, in that order
RowSelector = Callable[[np.ndarray | torch.Tensor], contextlib.AbstractContextManager[None]]
# Half precision has ~3 significant digits: step sizes, margins (FLOAT_GUARD) and line searches vanish in it.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an attack computes in for inputs of `dtype`: float32 for half precision, else itself."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


@dataclass
class Victim:
    """logits: x -> the attack tensor (differentiable); reader: how it maps to the real scores.

    jacobian: a victim whose gradients are estimated supplies its own Jacobian (ML-DeepFool asks
    for it); None means autograd through `logits`. begin: called by the attack entry point with the
    rows of the batch about to be attacked (per-row query ledgers start there). select: a victim that
    keeps something per row (query ledgers, the pass-through inputs of a multi-input model) must be
    told which rows a call on a sub-batch sends: attacks wrap such calls in `on_rows(ids)`.
    progress: told, through `report`, how much of the batch's work is done (0..1), so a long batch
    shows progress before it ends.
    model_dtype: the dtype the model's graph takes when the attack works in another one (`working`).

    The attack space always comes back in the dtype of the x it was given: a graph whose score output is
    float16 or float64 (a Cast at its end) must not leak that dtype into the attacks' float32 tensors.
    budget: the onnxruntime queries each row may spend (a scores-only
    victim: --max-queries; None: no limit), which black-box attacks plan their schedules by.
    """

    logits: Callable[[torch.Tensor], torch.Tensor]
    reader: ScoreReader
    box: tuple[float, float]
    jacobian: JacobianFn | None = None
    begin: Callable[[np.ndarray], None] | None = None
    select: RowSelector | None = None
    progress: Callable[[float], None] | None = None
    model_dtype: torch.dtype | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.select is None:  # a logits callable with its own row selection (QueryModel) names its rows
            self.select = getattr(self.logits, "select", None)

    def on_rows(self, rows: torch.Tensor | np.ndarray | None) -> contextlib.AbstractContextManager[None]:
        """Calls inside the block send the rows `rows` of the attacked batch (None: the whole batch)."""
        if rows is None or self.select is None:
            return contextlib.nullcontext()
        return self.select(rows)

    def report(self, fraction: float) -> None:
        """The share of the batch's work done so far (attacks call it once per iteration)."""
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, float(fraction))))

    def working(self, dtype: torch.dtype) -> Victim:
        """This victim for an attack on inputs of `dtype` that computes in `working_dtype(dtype)`."""
        if working_dtype(dtype) == dtype:
            return self
        return dataclasses.replace(self, model_dtype=dtype)

    def attack_space(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x if self.model_dtype is None else x.to(self.model_dtype))
        if x.is_floating_point() and z.dtype != x.dtype:
            z = z.to(x.dtype)
        return self.reader.attack_space(z)


@dataclass
class PairVictim:
    """Two models (A, B) seen through one input, for a pair method (`disagree`): the reference's rows are
    mapped into each member's input (`to_a`, `to_b`) and read as each member's decision margins on the
    labels both share (`columns_a[k]`, `columns_b[k]`: the k-th shared label's column in A's and B's
    scores), in logit units (ScoreReader.decision_margins), so a float model attacked on its logits and an
    int8 build read on its quantised probabilities are compared in the same units. `box`: the reference's."""

    a: Victim
    b: Victim
    to_a: InputMap
    to_b: InputMap
    columns_a: torch.Tensor
    columns_b: torch.Tensor
    box: tuple[float, float]
    progress: Callable[[float], None] | None = None

    def margins(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A's, B's) margins [N, S] on the shared labels; a label is predicted where its margin is > 0."""
        margin_a = self.a.reader.decision_margins(self.a.attack_space(self.to_a(x)))
        margin_b = self.b.reader.decision_margins(self.b.attack_space(self.to_b(x)))
        return margin_a[:, self.columns_a.to(x.device)], margin_b[:, self.columns_b.to(x.device)]

    def begin(self, rows: np.ndarray) -> None:
        """The rows of the batch about to be searched (per-row query ledgers of estimated members start)."""
        for member in (self.a, self.b):
            if member.begin is not None:
                member.begin(rows)

    @contextlib.contextmanager
    def on_rows(self, rows: torch.Tensor | np.ndarray | None) -> Iterator[None]:
        """Calls inside the block send the rows `rows` of the batch to both members."""
        with self.a.on_rows(rows), self.b.on_rows(rows):
            yield

    def report(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, float(fraction))))
