"""A differentiable victim whose scores come from onnxruntime and whose gradients are estimated.

Forward: one score_fn call on the batch (1 query per row). Backward: the vector-Jacobian
product v^T J(x) for the incoming grad_output v, estimated from antithetic random directions

    g(x) = 1 / (2 sigma S) * sum_{s=1..S} v . (f(x + sigma u_s) - f(x - sigma u_s)) u_s,

u_s ~ N(0, I) (NES) or u_s uniform in {-1, +1}^d (SPSA). For either, E[u u^T] = I, so g is an
unbiased estimate of v^T J for a linear f, and for any f of the gradient of the smoothed model
f_sigma(x) = E_u f(x + sigma u) (Gaussian u): that is what gives a piecewise-constant tree
ensemble a useful signal, as long as sigma is comparable to the distance between split
thresholds. sigma = radius * (hi - lo): the radius is stated relative to the box, so a default
means the same on [0, 1] pixels and on [-1, 1] features.

Every row's 2S perturbed points go to onnxruntime in ONE batched call (cost 2S queries per
row). Perturbed points are clipped to the box while the estimator keeps the nominal u: a
coordinate pressed against a bound then contributes a one-sided difference (the right sign,
at most half the size), where reflecting would make the pair agree in that coordinate and
cancel its signal.

Query accounting (all counts are rows sent to score_fn, exactly):
- `forward_cost` (1) per row and call; `backward_cost` (2S) per row whose grad_output row is
  non-zero (rows with a zero row, e.g. a satisfied hinge, are not queried and cost 0);
  `jacobian_cost(d)` per row for `jacobian`.
- `queries`: the running total over the model's life; `spent[i]`: per row of the current
  ledger (see `begin`).
- Budget: with `budget=B`, a row is never sent once its spent queries plus what the call
  needs would exceed B (a forward that will be differentiated reserves 1 + 2S). Such a row is
  marked `exhausted`, is never queried again (until `begin`), reports `neutral` for every label
  and gets a zero gradient. With `neutral` set to the attack threshold, every label margin is
  exactly 0 and every ranking pair tied, so no criterion with a positive margin counts the row
  as improved or successful: an unchanged attack keeps its best iterate and stays within the
  budget; a caller that wants to stop early reads `exhausted`.

Rows are attributed to ledger rows by position: a call of the ledger's size maps row i to
ledger row i; a call on a subset (ML-DeepFool's active rows) names them with `select(ids)` or
`jacobian(x, rows=ids)`. The random directions of a row are drawn from (seed, row key, how many
estimates that row has drawn), so they do not depend on which other rows share the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ScoreFn = Callable[[np.ndarray], np.ndarray]

DISTRIBUTIONS = ("gaussian", "rademacher")
JACOBIAN_METHODS = ("auto", "random", "coordinates")
# Measured with ML-CW hide-single on Yeast (bench/estimated.py, box [-1, 1], 20 inputs, one forest
# per label): every (S, radius) in {10, 20, 40} x {0.005, 0.01, 0.02, 0.05} reached 100%; S = 20
# gave L2 0.32-0.34 at ~7k queries per input (S = 10: 0.41-0.44 at ~3.6k; S = 40: 0.27 at ~12k),
# and radius 0.02 did best on a forest fit on the 2-D y (40% against 30-35% at 0.05-0.1).
DEFAULT_SAMPLES = 20
DEFAULT_RADIUS = 0.02
# A row whose every antithetic pair returned the same scores samples twice as far next time, up to this
# factor of the radius (a saturated or piecewise-constant output shows no change within sigma).
MAX_RADIUS_SCALE = 16.0
# A row that has spent this share of its budget without one estimate that saw the scores change is
# stopped: the rest of its budget would buy nothing either.
STALL_SHARE = 0.25
STALL_REASONS = {0: "", 1: "flat scores: no query around the input changed the model's scores "
                           "(a saturated or piecewise-constant output)"}
FLAT = 1


class QueryBudgetError(RuntimeError):
    """A call that cannot be answered at all within the budget (nothing is known about the model yet)."""


@dataclass
class QueryLedger:
    """Per-row bookkeeping of one batch of inputs."""

    keys: np.ndarray  # int64 [n]: seeds each row's directions (e.g. the input's global index)
    spent: np.ndarray  # int64 [n]: queries charged to the row
    draws: np.ndarray  # int64 [n]: estimates drawn so far (the row's next random stream)
    exhausted: np.ndarray  # bool [n]: the budget stopped the row
    budget: int | None
    scale: np.ndarray  # float64 [n]: the row's sampling radius, as a multiple of sigma
    signal: np.ndarray  # bool [n]: some estimate of the row saw the scores change
    stalled: np.ndarray  # int8 [n]: why the row was stopped before its budget ran out (STALL_REASONS)

    @classmethod
    def create(cls, rows: int | Sequence[int] | np.ndarray, budget: int | None) -> QueryLedger:
        keys = np.arange(rows, dtype=np.int64) if isinstance(rows, int) else np.asarray(rows, dtype=np.int64)
        n = len(keys)
        return cls(keys=keys, spent=np.zeros(n, dtype=np.int64), draws=np.zeros(n, dtype=np.int64),
                   exhausted=np.zeros(n, dtype=bool), budget=budget, scale=np.ones(n),
                   signal=np.zeros(n, dtype=bool), stalled=np.zeros(n, dtype=np.int8))

    def observe(self, rows: np.ndarray, changed: np.ndarray) -> None:
        """After an estimate: rows whose scores never changed sample farther, and are stopped (FLAT) once
        they have spent STALL_SHARE of the budget without any signal."""
        self.signal[rows[changed]] = True
        flat = rows[~changed]
        self.scale[flat] = np.minimum(self.scale[flat] * 2, MAX_RADIUS_SCALE)
        if self.budget is not None:
            stop = flat[~self.signal[flat] & (self.spent[flat] >= STALL_SHARE * self.budget)]
            self.exhausted[stop] = True
            self.stalled[stop] = FLAT

    def affordable(self, rows: np.ndarray, cost: int) -> np.ndarray:
        """Which of `rows` can pay `cost` now; the others become exhausted for good."""
        ok = ~self.exhausted[rows]
        if self.budget is not None:
            ok &= self.spent[rows] + cost <= self.budget
        self.exhausted[rows[~ok]] = True
        return ok


def directions(seed: int, key: int, draw: int, samples: int, dim: int, distribution: str) -> np.ndarray:
    """The S x d directions of one row's estimate number `draw`: a function of its arguments only."""
    rng = np.random.default_rng([seed, key, draw])
    if distribution == "rademacher":
        return rng.integers(0, 2, size=(samples, dim)).astype(np.float64) * 2 - 1
    return rng.standard_normal((samples, dim))


def antithetic_points(x: np.ndarray, u: np.ndarray, sigma: float | np.ndarray,
                      box: tuple[float, float]) -> np.ndarray:
    """x [k, d], u [k, S, d] -> [k, 2S, d]: x + sigma u_s then x - sigma u_s, clipped to the box (sigma: one
    value, or one per row [k])."""
    step = np.reshape(sigma, (-1, 1, 1)) * u
    points = np.concatenate([x[:, None, :] + step, x[:, None, :] - step], axis=1)
    return np.clip(points, box[0], box[1])


def difference_estimate(differences: np.ndarray, u: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    """The Jacobian estimate 1/(2 sigma S) sum_s (f(x + sigma u_s) - f(x - sigma u_s)) u_s^T.

    differences [k, S, L], u [k, S, d] -> [k, L, d] (sigma: one value, or one per row [k]). A VJP is
    v^T of it (same queries, any v).
    """
    samples = u.shape[1]
    return np.einsum("ksl,ksd->kld", differences, u) / (2.0 * np.reshape(sigma, (-1, 1, 1)) * samples)


class QueryModel:
    """`Victim.logits` for a model that only onnxruntime can run (see the module docstring).

    score_fn: numpy batch [N, ...] -> numpy scores [N, L] (e.g. LoadedModel.ort_scores).
    box: the valid input box; samples: S antithetic pairs per estimate; radius: sigma / (hi - lo);
    distribution: "gaussian" (NES) or "rademacher" (SPSA); budget: queries per row (None: no limit);
    neutral: what an exhausted row reports for every label (set it to the attack threshold).
    """

    forward_cost = 1

    def __init__(self, score_fn: ScoreFn, box: tuple[float, float], *, samples: int = DEFAULT_SAMPLES,
                 radius: float = DEFAULT_RADIUS, seed: int = 0, distribution: str = "gaussian",
                 budget: int | None = None, neutral: float = 0.5) -> None:
        lo, hi = float(box[0]), float(box[1])
        if not hi > lo:
            raise ValueError(f"the box must have lo < hi, got {box}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r} (expected one of: {', '.join(DISTRIBUTIONS)})")
        if budget is not None and budget < self.forward_cost + 2 * samples:
            raise ValueError(f"a budget of {budget} queries per row cannot pay one gradient step "
                             f"({self.forward_cost + 2 * samples} with samples={samples})")
        self.score_fn = score_fn
        self.box = (lo, hi)
        self.samples = samples
        self.radius = radius
        self.seed = seed
        self.distribution = distribution
        self.budget = budget
        self.neutral = neutral
        self.queries = 0
        self.num_labels: int | None = None
        self.ledger: QueryLedger | None = None
        self._selected: np.ndarray | None = None
        # a multi-input model: binds the pass-through rows of the ledger rows a query sends, one per point
        self.row_binding: Callable[[np.ndarray], AbstractContextManager[None]] | None = None

    # ---- costs -------------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        return self.radius * (self.box[1] - self.box[0])

    @property
    def backward_cost(self) -> int:
        """Queries of one gradient estimate, per row whose grad_output row is non-zero."""
        return 2 * self.samples

    def jacobian_method(self, dim: int, method: str = "auto") -> str:
        if method not in JACOBIAN_METHODS:
            raise ValueError(f"unknown Jacobian method {method!r} (expected one of: {', '.join(JACOBIAN_METHODS)})")
        if method == "auto":
            # Coordinates only when they cost no more: on Yeast (d = 103, S = 20) random directions
            # reached 100% with ML-DeepFool on both models, coordinates 100% / 87.5% at 1.2-3x the queries.
            return "coordinates" if dim <= self.samples else "random"
        return method

    def jacobian_cost(self, dim: int, method: str = "auto") -> int:
        """Queries per row of one `jacobian` call: 1 + 2d (coordinates) or 1 + 2S (random)."""
        chosen = self.jacobian_method(dim, method)
        return self.forward_cost + (2 * dim if chosen == "coordinates" else 2 * self.samples)

    # ---- ledger ------------------------------------------------------------------------------
    def begin(self, rows: int | Sequence[int] | np.ndarray, budget: int | None = None) -> QueryLedger:
        """Start per-row accounting for a batch: rows = its size, or one key per row (e.g. the
        inputs' global indices, so that a row's directions do not depend on batching). budget
        overrides the model's budget for this batch."""
        self.ledger = QueryLedger.create(rows, self.budget if budget is None else budget)
        return self.ledger

    @property
    def spent(self) -> np.ndarray:
        return self._ledger_or_fail().spent

    @property
    def exhausted(self) -> np.ndarray:
        return self._ledger_or_fail().exhausted

    @contextmanager
    def select(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> Iterator[None]:
        """Calls inside the block have one row per ledger row in `rows`, in that order."""
        previous = self._selected
        self._selected = _as_index(rows)
        try:
            yield
        finally:
            self._selected = previous

    def _ledger_or_fail(self) -> QueryLedger:
        if self.ledger is None:
            raise RuntimeError("no ledger yet: call begin(rows) or run a batch first")
        return self.ledger

    def _rows_for(self, m: int, rows: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        chosen = _as_index(rows) if rows is not None else self._selected
        if self.ledger is None:
            if chosen is not None:
                raise RuntimeError("rows were named before begin(rows) started a ledger")
            self.begin(m)
        ledger = self._ledger_or_fail()
        if chosen is None:
            if m != len(ledger.keys):
                raise ValueError(f"a batch of {m} rows for a ledger of {len(ledger.keys)}: name the rows "
                                 f"with select(ids) or begin(rows) a new batch")
            return np.arange(m)
        if len(chosen) != m:
            raise ValueError(f"{len(chosen)} rows named for a batch of {m}")
        return chosen

    # ---- queries -----------------------------------------------------------------------------
    def _query(self, points: np.ndarray, sample_shape: tuple[int, ...], rows: np.ndarray) -> np.ndarray:
        """One score_fn call on [k, d] points, point i belonging to ledger row rows[i]; counts k queries."""
        binding = nullcontext() if self.row_binding is None else self.row_binding(rows)
        with binding:
            scores = np.asarray(self.score_fn(points.reshape(len(points), *sample_shape)), dtype=np.float64)
        if scores.ndim != 2 or len(scores) != len(points):
            raise ValueError(f"score_fn gave shape {list(scores.shape)} for {len(points)} rows, not [rows, labels]")
        self.queries += len(points)
        self.num_labels = scores.shape[1]
        return scores

    def _labels_or_fail(self) -> int:
        if self.num_labels is None:
            raise QueryBudgetError("every row is out of budget before the model was queried once")
        return self.num_labels

    def scores(self, x: np.ndarray, rows: np.ndarray, reserve: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(scores [m, L], queried bool [m]) of x [m, ...]; a row is sent only if it can also pay `reserve`."""
        ledger = self._ledger_or_fail()
        queried = ledger.affordable(rows, self.forward_cost + reserve)
        flat = x.reshape(len(x), -1).astype(np.float64, copy=False)
        values = None
        if queried.any():
            values = self._query(flat[queried], x.shape[1:], rows[queried])
            ledger.spent[rows[queried]] += self.forward_cost
        out = np.full((len(x), self._labels_or_fail()), self.neutral, dtype=np.float64)
        if values is not None:
            out[queried] = values
        return out, queried

    def _estimate(self, flat: np.ndarray, rows: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
        """Jacobian estimates [k, L, d] at flat [k, d] from 2S antithetic queries per row."""
        ledger = self._ledger_or_fail()
        u = np.stack([directions(self.seed, int(ledger.keys[r]), int(ledger.draws[r]), self.samples,
                                 flat.shape[1], self.distribution) for r in rows])
        ledger.draws[rows] += 1
        sigma = self.sigma * ledger.scale[rows]
        points = antithetic_points(flat, u, sigma, self.box)
        values = self._query(points.reshape(-1, flat.shape[1]), sample_shape, np.repeat(rows, 2 * self.samples))
        values = values.reshape(len(rows), 2, self.samples, -1)
        ledger.spent[rows] += self.backward_cost
        differences = values[:, 0] - values[:, 1]
        ledger.observe(rows, np.any(differences != 0, axis=(1, 2)))
        return difference_estimate(differences, u, sigma)

    def _coordinate_differences(self, flat: np.ndarray, rows: np.ndarray,
                                sample_shape: tuple[int, ...]) -> np.ndarray:
        """Central differences with step sigma along each coordinate: [k, L, d] from 2d queries per row."""
        k, d = flat.shape
        eye = np.eye(d)
        points = np.concatenate([flat[:, None, :] + self.sigma * eye, flat[:, None, :] - self.sigma * eye], axis=1)
        points = np.clip(points, self.box[0], self.box[1])
        values = self._query(points.reshape(-1, d), sample_shape, np.repeat(rows, 2 * d)).reshape(k, 2, d, -1)
        ledger = self._ledger_or_fail()
        ledger.spent[rows] += 2 * d
        # the real step of each coordinate after clipping (one-sided at a bound)
        width = np.einsum("kii->ki", points[:, :d] - points[:, d:])  # [k, d]
        width = np.where(width > 0, width, np.inf)
        return ((values[:, 0] - values[:, 1]) / width[:, :, None]).transpose(0, 2, 1)

    def vjp(self, x: np.ndarray, grad_output: np.ndarray, rows: np.ndarray, queried: np.ndarray) -> np.ndarray:
        """v^T J estimated per row [m, ...]; rows not queried in the forward, out of budget, or with
        v = 0 get 0 and cost nothing."""
        flat = x.reshape(len(x), -1).astype(np.float64, copy=False)
        grad = np.zeros_like(flat)
        wanted = queried & np.any(grad_output != 0, axis=1)
        if wanted.any():
            ledger = self._ledger_or_fail()
            wanted[wanted] = ledger.affordable(rows[wanted], self.backward_cost)
        if wanted.any():
            jac = self._estimate(flat[wanted], rows[wanted], x.shape[1:])
            grad[wanted] = np.einsum("kl,kld->kd", grad_output[wanted], jac)
        return grad.reshape(x.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows_for(x.shape[0])
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        return _EstimatedScores.apply(x, self, rows, needs_grad)

    def jacobian(self, x: torch.Tensor, rows: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [m, L], J [m, L, d]) at x [m, ...], for ML-DeepFool.

        method "random": the estimate above from 2S antithetic queries (cost 1 + 2S per row);
        "coordinates": central differences with step sigma along every input coordinate (cost
        1 + 2d, exact up to O(sigma^2) on smooth models, a coordinate-wise smoothed slope on tree
        ensembles); "auto": coordinates when d <= S (no dearer than random directions). Rows out of budget get
        neutral scores and a zero Jacobian (see `exhausted`).
        """
        index = self._rows_for(x.shape[0], rows)
        array = x.detach().cpu().numpy()
        dim = int(np.prod(array.shape[1:]))
        chosen = self.jacobian_method(dim, method)
        extra = 2 * dim if chosen == "coordinates" else self.backward_cost
        scores, queried = self.scores(array, index, reserve=extra)
        jac = np.zeros((len(array), scores.shape[1], dim))
        if queried.any():
            flat = array.reshape(len(array), -1)[queried].astype(np.float64)
            if chosen == "coordinates":
                jac[queried] = self._coordinate_differences(flat, index[queried], array.shape[1:])
            else:
                jac[queried] = self._estimate(flat, index[queried], array.shape[1:])
        return (torch.as_tensor(scores, dtype=x.dtype, device=x.device),
                torch.as_tensor(jac, dtype=x.dtype, device=x.device))


class _EstimatedScores(torch.autograd.Function):
    """Forward: onnxruntime scores. Backward: the antithetic VJP estimate."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, model: QueryModel, rows: np.ndarray, needs_grad: bool) -> torch.Tensor:
        array = x.detach().cpu().numpy()
        reserve = model.backward_cost if needs_grad else 0
        scores, queried = model.scores(array, rows, reserve=reserve)
        ctx.model, ctx.rows, ctx.queried, ctx.array = model, rows, queried, array
        return torch.as_tensor(scores, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        v = grad_output.detach().cpu().numpy().astype(np.float64)
        grad = ctx.model.vjp(ctx.array, v, ctx.rows, ctx.queried)
        return torch.as_tensor(grad, dtype=grad_output.dtype, device=grad_output.device), None, None, None


def _as_index(rows: Sequence[int] | np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    if rows is None:
        return None
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    return np.asarray(rows, dtype=np.int64).reshape(-1)
