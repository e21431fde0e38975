"""Where an attack's gradients come from: one interface, chosen once at load.

- `TorchGraphSource`: autograd through the converted torch graph (checked against onnxruntime).
- `EstimatedSource`: the forward is onnxruntime itself, the backward an antithetic NES/SPSA
  estimate from onnxruntime queries (estimated/QueryModel), with per-row query ledgers.
- `ScoresOnlySource`: no gradient at all: onnxruntime scores, every row sent counted in a per-row
  ledger, for the black-box methods that declare `queries_only` (ml-square, ml-hsj), whether or not
  the graph converts.

LoadedModel holds one of them and never asks which: a new source (another runtime, a surrogate)
is a class here with the same four methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch

from .bridge.convert import forward_failure
from .estimated import QueryLedger, QueryModel
from .passthrough import PassThroughInputs
from .scores import ScoreReader
from .victim import Victim


class GradientSource(Protocol):
    kind: str  # recorded as the `gradients` attribute: "torch", "estimated" or "none" (scores only)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable attack tensor."""

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        """What an attack sees: the attack tensor, how to read it, the box and row selection."""

    def scores(self, x: torch.Tensor, reader: ScoreReader) -> torch.Tensor:
        """The scores the attack saw (to count its disagreements with onnxruntime)."""

    def queries_spent(self) -> np.ndarray | None:
        """onnxruntime queries per row of the batch last attacked (None when it asks none)."""

    def stall_reasons(self) -> np.ndarray | None:
        """Why each row of the batch last attacked was stopped early (estimated.STALL_REASONS codes)."""


class TorchGraphSource:
    """surrogate: the graph converts but misses the fidelity tolerance; it is still attacked through (every
    verdict is onnxruntime's), and the pipeline measures on the first batch whether its successes hold
    in onnxruntime before keeping it (pipeline.judge_surrogate)."""

    kind = "torch"

    def __init__(self, graph: torch.nn.Module, fidelity: float, surrogate: bool = False) -> None:
        self.graph = graph
        self.fidelity = fidelity  # max |torch - onnxruntime| on the probe
        self.surrogate = surrogate

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.graph(x)
        except Exception as exc:  # a converted module that fails on the attack's inputs: exit 3 naming its node
            raise forward_failure(exc) from None

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        return Victim(self.logits, reader, box, select=passthrough.select if passthrough is not None else None)

    def scores(self, x: torch.Tensor, reader: ScoreReader) -> torch.Tensor:
        return reader.to_scores(self.logits(x))

    def queries_spent(self) -> np.ndarray | None:
        return None

    def stall_reasons(self) -> np.ndarray | None:
        return None


class EstimatedSource:
    kind = "estimated"

    def __init__(self, query_model: QueryModel, score_fn: Callable[[np.ndarray], np.ndarray],
                 max_queries: int | None) -> None:
        self.query_model = query_model
        self.score_fn = score_fn  # onnxruntime scores of the original model
        self.max_queries = max_queries

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.query_model(x)

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        query_model = self.query_model
        query_model.box = (float(box[0]), float(box[1]))

        def jacobian(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # random directions measured better than coordinate differences on forests and pipelines alike
            return query_model.jacobian(x, rows=rows, method="random")

        def begin(rows: np.ndarray) -> None:
            query_model.begin(rows, self.max_queries)

        # the query model names its rows itself, and binds a multi-input model's pass-through rows per query
        return Victim(query_model, reader, box, jacobian=jacobian, begin=begin, select=query_model.select)

    def scores(self, x: torch.Tensor, reader: ScoreReader) -> torch.Tensor:
        return torch.as_tensor(self.score_fn(x.detach().cpu().numpy()), device=x.device)

    def queries_spent(self) -> np.ndarray | None:
        if self.query_model.ledger is None:
            return None
        return self.query_model.spent.copy()

    def stall_reasons(self) -> np.ndarray | None:
        if self.query_model.ledger is None:
            return None
        return self.query_model.ledger.stalled.copy()

class ScoresOnlySource:
    """onnxruntime scores and nothing else: `logits` is the model's real output (read with head None),
    and every row a call sends is charged to its row of the batch (a row named several times in one
    call, e.g. a black-box attack's candidates, pays once per time). The attack keeps within
    `max_queries`; a row charged beyond it is a bug, refused rather than recorded."""

    kind = "none"

    def __init__(self, score_fn: Callable[[np.ndarray], np.ndarray], max_queries: int | None) -> None:
        self.score_fn = score_fn
        self.max_queries = max_queries
        self.ledger: QueryLedger | None = None
        self._rows: list[np.ndarray] = []

    def begin(self, rows: np.ndarray) -> None:
        self.ledger = QueryLedger.create(rows, self.max_queries)

    @contextlib.contextmanager
    def select(self, rows: np.ndarray | torch.Tensor) -> Iterator[None]:
        index = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        self._rows.append(index.astype(np.int64).reshape(-1))
        try:
            yield
        finally:
            self._rows.pop()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        scores = np.asarray(self.score_fn(x.detach().cpu().numpy()), dtype=np.float64)
        if self.ledger is not None:
            rows = self._rows[-1] if self._rows else np.arange(len(x))
            if len(rows) != len(x):
                raise ValueError(f"{len(rows)} rows named for a call of {len(x)}")
            np.add.at(self.ledger.spent, rows, 1)
            if self.max_queries is not None and bool((self.ledger.spent[rows] > self.max_queries).any()):
                raise RuntimeError(f"an attack spent more than --max-queries {self.max_queries} on a row")
        return torch.as_tensor(scores, dtype=x.dtype, device=x.device)

    def victim(self, reader: ScoreReader, box: tuple[float, float], passthrough: PassThroughInputs | None) -> Victim:
        @contextlib.contextmanager
        def select(rows: np.ndarray | torch.Tensor) -> Iterator[None]:
            with self.select(rows), (passthrough.select(rows) if passthrough is not None else contextlib.nullcontext()):
                yield

        return Victim(self.logits, reader, box, begin=self.begin, select=select, budget=self.max_queries)

    def scores(self, x: torch.Tensor, reader: ScoreReader) -> torch.Tensor:
        return torch.as_tensor(self.score_fn(x.detach().cpu().numpy()), device=x.device)

    def queries_spent(self) -> np.ndarray | None:
        return None if self.ledger is None else self.ledger.spent.copy()

    def stall_reasons(self) -> np.ndarray | None:
        return None
