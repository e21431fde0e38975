"""What ML-CW, Rank I and Rank II share: the tanh box, Adam on w, the per-sample constant
search, early abort and best-iterate bookkeeping. Each method only supplies its loss term; the
criterion it was given says how far each sample got (`progress`) and whether it succeeded.

The problem per sample is  min_w ||x'(w) - x||^2 + c * h(s(x'(w))),  x'(w) = box(tanh w), with h a
hinge on the attack tensor. h is an exact penalty: once c exceeds the constraint's Lagrange
multiplier mu, the penalised minimum IS the constrained one, so the constant search only has to
find some c > mu; the rest of the L2 comes from how long and how finely Adam runs.

The search is per row, and the batch shrinks (departures from the paper's batch-level search):
- each row runs its own constant steps; a step ends after max_iter iterations, or earlier when the
  row's own loss stopped falling (checked every max_iter/10 iterations, > 0.9999 x the last check);
- a row leaves the batch, and costs nothing more, once its steps are spent, or (converge) once it
  succeeded and either its constant interval is tight or its best L2 gained less than `tolerance`
  (relative) over a whole step;
- warm start: a step starts from the row's best successful iterate (else from where the last step
  ended) instead of from x, with a fresh Adam state;
- first constant: c0 = 2 h(x) / ||grad_x h(x)||^2, the multiplier of the linearised problem
  min ||r||^2 s.t. h(x) + g.r <= 0, read from the first iteration's own gradient (no extra pass),
  times a factor since the linearisation underestimates curved boundaries (`first_factor`).
`exhaustive` settings (fixed c0, no abort, no convergence, cold starts) are the old search.

Adam is written out per row (its own step count per row) so rows can start steps at different
times and leave without disturbing the others; it is the same update as torch.optim.Adam, its bias
corrections read from per-step tables (`adam_schedule`). The gradient with respect to w comes from
one autograd call through the model, seeded with c on the term and 2 (x' - x) on x'; the first
iteration, which needs the term's own gradient for c0, chains to w by hand:
dx'/dw = (hi - lo) / 2 * (1 - tanh(w)^2) = 2 (hi - lo) u (1 - u), u = sigmoid(2w) = (tanh(w) + 1) / 2.
An iteration is a few dozen small tensor ops besides the model's; each costs microseconds of dispatch
and a pass over memory, so they are kept few (bench/overhead.py step_overhead measures them).

model_calls: 1 forward + 1 backward per row and iteration = 2 per row that takes part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..scores import Criterion
from ._checks import at_least_one, number
from .base import Attack, AttackResult, Option, Victim

# (attack-space scores [m, L], target [m, L], which rows of the attacked batch they are [m]) -> [m]
LossTerm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_NO_UPPER_BOUND = 1e10
# c0 = factor x the linearised multiplier (`first_factor`; measured in docs/benchmarks.md, issue 20's seventh round)
FULL_STEP_FACTOR = 2.0  # a first step of FULL_STEP iterations or more, on exact gradients
SHORT_STEP_FACTOR = 4.0  # a first step cut shorter (max_iter, a budget), or estimated gradients
FULL_STEP = 1000  # the paper's step length
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
_ABORT_RATIO = 0.9999
_CORRECTIONS_SETTLED = 18_000  # beta2^k < 2^-25 from here: 1 - beta2^k rounds to 1 in float32


@dataclass(frozen=True)
class SearchSettings:
    max_iter: int
    binary_steps: int
    initial_const: float | None  # None: from the first iteration's margins and gradient
    learning_rate: float
    abort_early: bool = True  # per row: end a step when its loss stops falling
    converge: bool = True  # per row: leave once succeeded and nothing more is gained
    warm_start: bool = True  # start each step from the best iterate, not from x
    tolerance: float = 1e-2  # relative L2 gain per step (and constant interval) counted as nothing
    max_calls: int | None = None  # per row: the search stops a row before it would exceed this many model calls


def first_factor(settings: SearchSettings, spent: int, estimated: bool) -> float:
    """The multiple of the linearised multiplier the search starts at. A lower first constant lands each row
    nearer its minimal perturbation (L2 1-4% lower at 2x than at 4x on bench/search.py's cases), but only
    when the first step has the iterations to reach the boundary from x: a step cut short by max_iter or a
    call budget ends before it at 2x on some rows (250 / 500 calls: 4 of 8 rows), and a gradient estimated
    from queries carries noise that inflates its norm, so its multiplier comes out too small."""
    iterations = settings.max_iter
    if settings.max_calls is not None:
        iterations = min(iterations, (settings.max_calls - spent) // 2)
    return FULL_STEP_FACTOR if iterations >= FULL_STEP and not estimated else SHORT_STEP_FACTOR


def to_box(w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def from_box(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(unit)


def adam_schedule(max_iter: int, learning_rate: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias corrections folded into two per-step tables, [max_iter + 1, 1, ...] each (shaped to
    broadcast over rows like `like`'s, in its dtype and device): with k steps
    taken before, step k+1 is  w -= m / (sqrt(v) * scale[k] + offset[k]),  the same update as
    w -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps),  c1 = 1 - beta1^(k+1), c2 = 1 - beta2^(k+1)
    (torch.optim.Adam's), up to float rounding. A row reads its own step's entry, so rows that started
    their constant steps at different times each keep their own corrections. The tables run on until
    both corrections are 1 to float32 precision, so a step count past their end reads the last entry
    (adam_step clamps) and the update stays exact for any number of steps."""
    steps = torch.arange(1, max(max_iter + 1, _CORRECTIONS_SETTLED) + 1, dtype=torch.float64)
    step_size = learning_rate / (1 - _BETA1 ** steps)
    root_correction2 = torch.sqrt(1 - _BETA2 ** steps)
    scale = 1 / (root_correction2 * step_size)
    offset = _EPS / step_size
    shape = (-1,) + (1,) * (like.dim() - 1)
    return scale.to(like).view(shape), offset.to(like).view(shape)


def adam_step(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, taken: torch.Tensor,
              schedule: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One Adam step on w, m, v in place, row i having taken taken[i] steps before (adam_schedule's tables)."""
    m.lerp_(grad, 1 - _BETA1)
    v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
    index = taken.clamp_max(len(schedule[0]) - 1)
    scale, offset = (torch.index_select(table, 0, index) for table in schedule)
    w.addcdiv_(m, torch.addcmul(offset, v.sqrt(), scale), value=-1)


@dataclass
class _Rows:
    """The working state of the rows still in the batch (compacted: row i of every tensor is ids[i])."""

    ids: torch.Tensor
    x: torch.Tensor
    target: torch.Tensor
    w: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    const: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    best_x: torch.Tensor
    best_quality: torch.Tensor
    best_l2: torch.Tensor
    best_success: torch.Tensor
    step_success: torch.Tensor
    step_start_l2: torch.Tensor
    previous_loss: torch.Tensor
    loss: torch.Tensor
    it: torch.Tensor  # iterations into the current constant step = Adam steps taken with the current state
    steps: torch.Tensor  # constant steps finished
    iterations: torch.Tensor  # iterations before the first success (AttackResult.iterations)
    calls: torch.Tensor
    schedule: tuple[torch.Tensor, torch.Tensor]  # adam_schedule's (scale, offset), shared by every row
    unset: bool = False  # the first constant is still to be read from the first iteration
    factor: float = SHORT_STEP_FACTOR  # the first constant's multiple of the linearised multiplier

    def keep(self, mask: torch.Tensor) -> _Rows:
        kept = {name: value[mask] for name, value in vars(self).items() if isinstance(value, torch.Tensor)}
        return _Rows(**kept, schedule=self.schedule, unset=self.unset, factor=self.factor)


def _start(x: torch.Tensor, target: torch.Tensor, settings: SearchSettings, lo: float, hi: float,
           calls: torch.Tensor, factor: float = SHORT_STEP_FACTOR) -> _Rows:
    n = x.shape[0]
    like = torch.zeros(n, dtype=x.dtype, device=x.device)
    w = from_box(x, lo, hi).detach()
    const = like + (settings.initial_const if settings.initial_const is not None else float("nan"))
    zeros_long = torch.zeros(n, dtype=torch.long, device=x.device)
    return _Rows(
        ids=torch.arange(n, device=x.device), x=x.detach(), target=target, w=w.clone(),
        m=torch.zeros_like(w), v=torch.zeros_like(w), const=const, lower=like.clone(),
        upper=like + _NO_UPPER_BOUND, best_x=x.detach().clone(), best_quality=like - 1,
        best_l2=like + float("inf"), best_success=zeros_long.bool(), step_success=zeros_long.bool(),
        step_start_l2=like + float("inf"), previous_loss=like + float("inf"), loss=like.clone(),
        it=zeros_long.clone(), steps=zeros_long.clone(), iterations=zeros_long.clone(), calls=calls.clone(),
        schedule=adam_schedule(settings.max_iter, settings.learning_rate, x),
        unset=settings.initial_const is None, factor=factor)


def _seeded(term: torch.Tensor, const: torch.Tensor, x_adv: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """c . term + <x', seed>: its gradient is that of term seeded with c plus `seed` on x'. Passing tensors as
    autograd's grad_outputs instead would import torch.fx.experimental.symbolic_shapes (and sympy: 0.3-0.5 s
    of a run's first step, measured) for autograd's shape check."""
    return torch.dot(term, const.to(term.dtype)) + torch.dot(x_adv.reshape(-1), seed.reshape(-1))


def _iterate(state: _Rows, victim: Victim, loss_term: LossTerm, criterion: Criterion, settings: SearchSettings,
             full_batch: int) -> None:
    """One Adam iteration of every row in the batch, with best-iterate bookkeeping.

    Written for few tensor ops (each costs microseconds of dispatch, comparable to the arithmetic at
    these sizes): the gradient of ||x' - x||^2 + c * term with respect to w comes out of one
    autograd call, seeded with c on the term and 2 (x' - x) on x', so the chain through x'(w) runs in
    the engine; Adam reads its bias corrections from `adam_schedule`."""
    lo, hi = victim.box
    dims = tuple(range(1, state.x.dim()))
    shape = (-1,) + (1,) * len(dims)  # a per-row value broadcast over a row's dims
    w = state.w.detach().requires_grad_(True)
    with victim.on_rows(None if len(state.ids) == full_batch else state.ids):
        unit = torch.sigmoid(w * 2)  # = (tanh(w) + 1) / 2, and several times cheaper than tanh on CPU
        x_adv = unit if (lo, hi) == (0.0, 1.0) else unit * (hi - lo) + lo
        scores = victim.attack_space(x_adv)
        term = loss_term(scores, state.target, state.ids)
        with torch.no_grad():
            delta = x_adv - state.x
            distance = delta.square().sum(dim=dims)
        if state.unset:  # the first constant needs the term's own gradient: chained to w by hand once
            (g_term,) = torch.autograd.grad(term.sum(), x_adv)
            with torch.no_grad():
                state.unset = False
                norm2 = g_term.flatten(1).pow(2).sum(dim=1)
                guess = state.factor * 2 * term / norm2.clamp_min(1e-12)
                usable = (term > 0) & (norm2 > 0) & torch.isfinite(guess)
                state.const = torch.where(torch.isnan(state.const),
                                          torch.where(usable, guess, torch.ones_like(guess)), state.const)
                grad = (2 * delta + state.const.view(shape) * g_term) * (2 * (hi - lo) * unit * (1 - unit))
        else:  # a scalar, not (term, x_adv) seeded with (c, 2 delta): see _seeded
            (grad,) = torch.autograd.grad(_seeded(term, state.const, x_adv, 2 * delta), w)
    state.calls += 2
    with torch.no_grad():
        term = term.detach()
        state.loss = torch.addcmul(distance, state.const, term)
        adam_step(state.w, state.m, state.v, grad, state.it, state.schedule)
        state.it += 1

        value, success = criterion.progress(scores.detach(), state.target)
        l2 = distance.sqrt()
        better = torch.where(value == state.best_quality, l2 < state.best_l2, value > state.best_quality)
        state.best_quality = torch.where(better, value, state.best_quality)
        state.best_l2 = torch.where(better, l2, state.best_l2)
        state.best_x = torch.where(better.view(shape), x_adv, state.best_x)
        state.best_success |= success
        state.step_success |= success
        state.iterations += ~state.best_success


def _end_steps(state: _Rows, ended: torch.Tensor, w0: torch.Tensor, settings: SearchSettings,
               lo: float, hi: float) -> torch.Tensor:
    """Close the constant step of the `ended` rows; returns which rows are finished."""
    won = state.step_success
    upper = torch.where(won, torch.minimum(state.upper, state.const), state.upper)
    lower = torch.where(won, state.lower, torch.maximum(state.lower, state.const))
    const = torch.where(upper < _NO_UPPER_BOUND, (lower + upper) / 2, state.const * 10)
    state.upper = torch.where(ended, upper, state.upper)
    state.lower = torch.where(ended, lower, state.lower)
    state.const = torch.where(ended, const, state.const)
    state.steps += ended.long()

    finished = ended & (state.steps >= settings.binary_steps)
    if settings.converge:
        tight = state.upper - state.lower <= settings.tolerance * state.upper
        stalled = state.step_start_l2 - state.best_l2 <= settings.tolerance * state.best_l2
        finished |= ended & state.best_success & (tight | stalled)

    restart = ended & ~finished
    shape = (-1,) + (1,) * (state.w.dim() - 1)
    if settings.warm_start:
        resume = torch.where(state.best_success.view(shape), from_box(state.best_x, lo, hi), state.w)
    else:
        resume = w0
    again = restart.view(shape)
    state.w = torch.where(again, resume, state.w)
    state.m = torch.where(again, torch.zeros_like(state.m), state.m)
    state.v = torch.where(again, torch.zeros_like(state.v), state.v)
    state.it = torch.where(restart, torch.zeros_like(state.it), state.it)
    state.previous_loss = torch.where(restart, torch.full_like(state.previous_loss, float("inf")),
                                      state.previous_loss)
    state.step_success = state.step_success & ~restart
    state.step_start_l2 = torch.where(restart, state.best_l2, state.step_start_l2)
    return finished


def _until_next_event(state: _Rows, max_iter: int, check_every: int, max_calls: int | None = None) -> int:
    """Iterations every row can run before some row reaches a check point, its step's end or its call budget."""
    it = state.it
    next_check = (it // check_every + 1) * check_every
    until = torch.minimum(next_check, torch.full_like(it, max_iter)) - it
    if max_calls is not None:
        until = torch.minimum(until, ((max_calls - state.calls) // 2).clamp_min(0))
    return int(until.min())


def constant_search(victim: Victim, x: torch.Tensor, target: torch.Tensor, loss_term: LossTerm,
                    criterion: Criterion, settings: SearchSettings,
                    calls: torch.Tensor | None = None, estimated: bool | None = None) -> AttackResult:
    """min ||x' - x||^2 + c * loss_term over x' = box(w), c searched per sample.

    calls: model calls already spent per row (e.g. a clean forward the loss term needed). estimated: whether
    the victim's gradients are estimated from queries (None: it is when the victim supplies its own Jacobian)."""
    lo, hi = victim.box
    n = x.shape[0]
    spent = torch.zeros(n, dtype=torch.long, device=x.device) if calls is None else calls.to(x.device).long()
    out_x = x.detach().clone()
    out_success = torch.zeros(n, dtype=torch.bool, device=x.device)
    out_iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    out_calls = spent.clone()
    if estimated is None:
        estimated = victim.jacobian is not None
    factor = first_factor(settings, int(spent.max()) if n else 0, estimated)
    state = _start(x, target, settings, lo, hi, spent, factor)
    w0 = state.w.clone()
    check_every = max(1, settings.max_iter // 10)

    while len(state.ids):
        for _ in range(_until_next_event(state, settings.max_iter, check_every, settings.max_calls)):
            _iterate(state, victim, loss_term, criterion, settings, n)
        with torch.no_grad():
            # a row whose next iteration would pass its call budget leaves with its best iterate
            spent_all = (state.calls + 2 > settings.max_calls) if settings.max_calls is not None else None
            # a finished row counts whole; an active one by the constant steps it has run (at most binary_steps)
            running = ((state.steps + state.it / settings.max_iter) / settings.binary_steps).clamp_max(1.0)
            victim.report((n - len(state.ids) + float(running.sum())) / n)
            at_check = state.it % check_every == 0
            ended = state.it >= settings.max_iter
            if settings.abort_early:
                ended |= at_check & (state.loss > _ABORT_RATIO * state.previous_loss)
            state.previous_loss = torch.where(at_check, state.loss, state.previous_loss)
            if spent_all is not None:
                ended &= ~spent_all
            if not bool(ended.any()) and (spent_all is None or not bool(spent_all.any())):
                continue
            finished = _end_steps(state, ended, w0, settings, lo, hi) if bool(ended.any()) else ended
            if spent_all is not None:
                finished = finished | spent_all
            if bool(finished.any()):
                ids = state.ids[finished]
                out_x[ids] = state.best_x[finished]
                out_success[ids] = state.best_success[finished]
                out_iterations[ids] = state.iterations[finished]
                out_calls[ids] = state.calls[finished]
                stay = ~finished
                state = state.keep(stay)
                w0 = w0[stay]
    return AttackResult.from_inputs(x, out_x, out_success, out_iterations, out_calls)


class ConstantSearchAttack(Attack):
    """The hyperparameters ML-CW, Rank I and Rank II share.

    Default values: binary_steps 10 x max_iter 1000 at most, lr 1e-2 (the paper's), with the per-row
    shrinking search above. exhaustive=True restores the full search: every row runs every step for
    max_iter iterations from x, c0 = initial_const (1 when unset), no early abort, no convergence.
    abort_early=False keeps the shrinking search but runs every step to max_iter.
    """

    options = {
        "binary_steps": Option(int, "constant search steps"),
        "learning_rate": Option(float, "Adam learning rate"),
        "kappa": Option(float, "confidence margin on the attack tensor (logits)"),
        "initial_const": Option(float, "first constant of the search (None: from the clean margins)"),
        "exhaustive": Option(bool, "the paper's exhaustive search: every row runs every step (slow)",
                             switch="exhaustive", value=True),
        "abort_early": Option(bool, "never end a constant step early when the loss stalls",
                              switch="no-early-stop", value=False),
        "budget": Option(int, "model calls per input at most (forward and backward 1 each): the search stops "
                              "each row there with its best iterate (None: no limit)"),
    }

    def __init__(self, max_iter: int = 1000, binary_steps: int = 10, initial_const: float | None = None,
                 learning_rate: float = 1e-2, kappa: float = 0.0, abort_early: bool = True,
                 exhaustive: bool = False, budget: int | None = None) -> None:
        self.max_iter = at_least_one("max_iter", max_iter)
        self.binary_steps = at_least_one("binary_steps", binary_steps)
        self.initial_const = None if initial_const is None else number("initial_const", initial_const, positive=True)
        self.learning_rate = number("learning_rate", learning_rate, positive=True)
        self.kappa = number("kappa", kappa, positive=False)
        self.abort_early = bool(abort_early)
        self.exhaustive = bool(exhaustive)
        self.budget = None if budget is None else at_least_one("budget", budget)

    def settings(self) -> SearchSettings:
        if self.exhaustive:
            const = 1.0 if self.initial_const is None else self.initial_const
            return SearchSettings(self.max_iter, self.binary_steps, const, self.learning_rate,
                                  abort_early=False, converge=False, warm_start=False, max_calls=self.budget)
        return SearchSettings(self.max_iter, self.binary_steps, self.initial_const, self.learning_rate,
                              abort_early=self.abort_early, max_calls=self.budget)

