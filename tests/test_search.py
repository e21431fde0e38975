"""The per-sample constant search: exact model-call accounting, shrinking batches, and the
exhaustive search still reachable (against the previous batch-level search, kept here as an oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxattack.attacks import MLCarliniWagner, MLDeepFool, RankII, Victim
from onnxattack.attacks._search import from_box, to_box
from onnxattack.loader import load
from onnxattack.scores import RankingCriterion, ThresholdCriterion
from onnxattack.targets import make_targets, parse_target

BOX = (-1.0, 1.0)
SMALL = dict(max_iter=60, binary_steps=4, learning_rate=0.05)


class CountingLogits:
    """Wraps the attack tensor: counts forward rows, and backward rows through a hook on the output."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.forward_rows = 0
        self.backward_rows = 0
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        self.forward_rows += x.shape[0]
        self.batch_sizes.append(x.shape[0])
        if out.requires_grad:
            rows = x.shape[0]

            def count(grad: torch.Tensor) -> None:
                self.backward_rows += rows

            out.register_hook(count)
        return out

    @property
    def total(self) -> int:
        return self.forward_rows + self.backward_rows


@pytest.fixture(scope="module")
def yeast(zoo_model, zoo_inputs):
    model = load(zoo_model("yeast-mlp"), device="cpu", box=BOX)
    x = zoo_inputs("yeast-mlp", 16)
    criterion = ThresholdCriterion(threshold=model.reader.threshold)
    clean = model.ort_scores(x)
    target = make_targets(parse_target("random", model.labels), criterion.predict(clean), clean, 0)
    attacked = ~criterion.reached(clean, target)
    return model, model.as_tensor(x[attacked]), torch.from_numpy(target[attacked]), criterion


def counted(model) -> tuple[Victim, CountingLogits]:
    counter = CountingLogits(model.attack_logits)
    return Victim(counter, model.reader, BOX), counter


@pytest.mark.parametrize("options", [SMALL, dict(SMALL, exhaustive=True), dict(SMALL, abort_early=False)])
def test_model_calls_count_exactly_the_passes_made(yeast, options):
    model, x, target, criterion = yeast
    victim, counter = counted(model)
    result = MLCarliniWagner(**options)(victim, x, target, criterion)
    assert result.model_calls.dtype == torch.int64 and result.model_calls.shape == (len(x),)
    assert int(result.model_calls.sum()) == counter.total
    assert counter.forward_rows == counter.backward_rows


def test_ml_deepfool_counts_its_passes(yeast):
    model, x, target, criterion = yeast
    for options in (dict(), dict(jacobian="loop"), dict(jacobian_budget_mb=1e-4)):
        victim, counter = counted(model)
        result = MLDeepFool(max_iter=20, **options)(victim, x, target, criterion)
        assert int(result.model_calls.sum()) == counter.total, options
        assert bool(result.success.float().mean() >= 0.9)


def test_rank2_counts_its_clean_forward(zoo_model, zoo_inputs):
    model = load(zoo_model("digits-ranker"), device="cpu")
    x = model.as_tensor(zoo_inputs("digits-ranker", 4))
    with torch.no_grad():
        scores = model.attack_logits(x)
    target = torch.zeros_like(scores, dtype=torch.int8)
    target.scatter_(1, scores.argsort(dim=1)[:, :3], 1)  # the three lowest-scored labels
    counter = CountingLogits(model.attack_logits)
    result = RankII(max_iter=20, binary_steps=2, learning_rate=0.05)(
        Victim(counter, model.reader, (0.0, 1.0)), x, target, RankingCriterion(k=3))
    assert int(result.model_calls.sum()) == counter.total
    assert counter.forward_rows == counter.backward_rows + len(x)


def test_a_finished_row_stops_costing_calls(yeast):
    model, x, target, criterion = yeast
    victim, counter = counted(model)
    result = MLCarliniWagner(max_iter=200, binary_steps=10, learning_rate=0.05)(victim, x, target, criterion)
    calls = result.model_calls
    assert bool(result.success.all())
    assert int(calls.max()) > int(calls.min())  # some rows left while others went on
    assert int(calls.max()) < 2 * 200 * 10  # nobody paid the exhaustive price
    sizes = counter.batch_sizes
    assert sizes == sorted(sizes, reverse=True)  # the batch only shrinks
    assert sizes.count(len(x)) == int(calls.min()) // 2  # the first row out stopped costing there
    assert sum(sizes) == int(calls.sum()) // 2


def legacy_search(victim: Victim, x, target, criterion, max_iter, binary_steps, learning_rate, abort_early):
    """The previous batch-level search (c0 = 1, whole batch every step, batch-level loss abort)."""
    lo, hi = victim.box
    criterion = criterion.in_attack_space(victim.reader)
    n = len(x)
    w0 = from_box(x, lo, hi).detach()
    const = torch.ones(n, dtype=x.dtype)
    lower, upper = torch.zeros(n, dtype=x.dtype), torch.full((n,), 1e10, dtype=x.dtype)
    best_success = torch.zeros(n, dtype=torch.bool)
    check = max(1, max_iter // 10)
    for _ in range(binary_steps):
        w = w0.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=learning_rate)
        step_success = torch.zeros(n, dtype=torch.bool)
        previous = float("inf")
        for iteration in range(max_iter):
            x_adv = to_box(w, lo, hi)
            scores = victim.attack_space(x_adv)
            hinge = (criterion.margin - criterion.label_margins(scores, target)).clamp_min(0).sum(dim=1)
            loss = (x_adv - x).flatten(1).pow(2).sum(dim=1) + const * hinge
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
            success = criterion.reached_tensor(scores.detach(), target)
            best_success |= success
            step_success |= success
            if abort_early and (iteration + 1) % check == 0:
                current = float(loss.detach().sum())
                if current > previous * 0.9999:
                    break
                previous = current
        upper = torch.where(step_success, torch.minimum(upper, const), upper)
        lower = torch.where(step_success, lower, torch.maximum(lower, const))
        const = torch.where(upper < 1e10, (lower + upper) / 2, const * 10)
    return best_success


def test_exhaustive_settings_reproduce_the_old_search(yeast):
    model, x, target, criterion = yeast
    options = dict(max_iter=40, binary_steps=3, learning_rate=0.05)
    old = legacy_search(model.victim(BOX), x, target, criterion, abort_early=False, **options)
    result = MLCarliniWagner(exhaustive=True, **options)(model.victim(BOX), x, target, criterion)
    assert torch.equal(result.success, old)
    assert bool((result.model_calls == 2 * 40 * 3).all())


def test_the_new_default_succeeds_at_least_as_often_as_the_old_default(yeast):
    model, x, target, criterion = yeast
    options = dict(max_iter=50, binary_steps=5, learning_rate=0.02)
    old = legacy_search(model.victim(BOX), x, target, criterion, abort_early=True, **options)
    new = MLCarliniWagner(**options)(model.victim(BOX), x, target, criterion)
    assert int(new.success.sum()) >= int(old.sum())
    assert int(new.model_calls.sum()) < 2 * 50 * 5 * len(x)


def test_the_search_is_deterministic(yeast):
    model, x, target, criterion = yeast
    first = MLCarliniWagner(**SMALL)(model.victim(BOX), x, target, criterion)
    second = MLCarliniWagner(**SMALL)(model.victim(BOX), x, target, criterion)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.model_calls, second.model_calls)
    assert np.all(first.x_adv.numpy() >= BOX[0]) and np.all(first.x_adv.numpy() <= BOX[1])


def test_per_row_adam_is_torch_adam_for_rows_started_at_different_times():
    """adam_step with adam_schedule's tables against torch.optim.Adam run on each row alone, on a fixed
    gradient sequence, rows joining after 0, 3 and 7 steps (as rows restart constant steps at different times)."""
    from onnxattack.attacks._search import adam_schedule, adam_step

    generator = torch.Generator().manual_seed(0)
    rows, steps, lr = 3, 12, 0.05
    w0 = torch.randn(rows, 2, 5, generator=generator)
    grads = torch.randn(steps, rows, 2, 5, generator=generator) * torch.logspace(-4, 1, steps).view(-1, 1, 1, 1)
    joins = [0, 3, 7]
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    taken = torch.zeros(rows, dtype=torch.long)
    schedule = adam_schedule(steps, lr, w0)
    for k in range(steps):
        active = torch.tensor([k >= j for j in joins])
        before = w.clone()
        adam_step(w, m, v, grads[k] * active.view(-1, 1, 1).float(), taken, schedule)
        w = torch.where(active.view(-1, 1, 1), w, before)  # a row that has not joined yet stays put
        m = torch.where(active.view(-1, 1, 1), m, torch.zeros_like(m))
        v = torch.where(active.view(-1, 1, 1), v, torch.zeros_like(v))
        taken += active.long()
    for row, join in enumerate(joins):
        leaf = w0[row].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([leaf], lr=lr)
        for k in range(join, steps):
            leaf.grad = grads[k, row].clone()
            optimiser.step()
        torch.testing.assert_close(w[row], leaf.detach(), rtol=1e-5, atol=1e-6)


def _hinge_problem(yeast, box):
    """(victim, x in the box, target, the criterion in attack space, ML-CW's hinge term) on the yeast MLP."""
    model, x, target, criterion = yeast
    victim = model.victim(box)
    labels = criterion.in_attack_space(victim.reader)

    def term(scores, goal, rows):
        return (labels.margin - labels.label_margins(scores, goal)).clamp_min(0).sum(dim=1)

    return victim, x.clamp(*box), target, labels, term


@pytest.mark.parametrize(("initial_const", "box"), [(0.7, BOX), (None, BOX), (0.7, (0.0, 1.0))])
def test_one_iteration_is_torch_adam_on_the_penalised_loss(yeast, initial_const, box):
    """_iterate's gradient (one seeded autograd call; the hand chain on the iteration that reads c0) and
    update equal torch.optim.Adam on ||box(w) - x||^2 + c * term, with the old tanh box."""
    from onnxattack.attacks._search import SearchSettings, _iterate, _start, to_box

    victim, x, target, labels, term = _hinge_problem(yeast, box)
    settings = SearchSettings(max_iter=20, binary_steps=2, initial_const=initial_const, learning_rate=0.05)
    state = _start(x, target, settings, *box, torch.zeros(len(x), dtype=torch.long))
    reference = [state.w[row].clone().requires_grad_(True) for row in range(len(x))]
    optimisers = [torch.optim.Adam([leaf], lr=0.05) for leaf in reference]
    for _ in range(3):
        _iterate(state, victim, term, labels, settings, len(x))
        for row, (leaf, optimiser) in enumerate(zip(reference, optimisers, strict=True)):
            x_adv = to_box(leaf, *box)
            scores = victim.attack_space(x_adv.unsqueeze(0))
            loss = (x_adv - x[row]).pow(2).sum() + state.const[row] * term(scores, target[row:row + 1], None).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    expected = torch.stack([leaf.detach() for leaf in reference])
    # compared in the box: where tanh saturates (pixels on the box's edge) the reference's 1 - tanh^2 cancels
    # and Adam's normalisation magnifies that rounding in w, not in x' = box(w)
    torch.testing.assert_close(to_box(state.w, *box), to_box(expected, *box), rtol=1e-5, atol=1e-6)
    assert bool((state.it == 3).all()) and bool((state.calls == 6).all())
    assert bool(torch.isfinite(state.const).all()) and not state.unset


def test_adam_step_past_the_tables_end_is_still_adam():
    """A row that has taken more steps than adam_schedule tabulates reads the settled corrections: still Adam."""
    from onnxattack.attacks._search import adam_schedule, adam_step

    generator = torch.Generator().manual_seed(1)
    w, m, v, grad = (torch.randn(2, 4, generator=generator) for _ in range(4))
    v = v.abs()
    taken = torch.tensor([10, 50_000])
    expected = []
    for row, k in enumerate(taken.tolist()):
        m_new = 0.9 * m[row] + 0.1 * grad[row]
        v_new = 0.999 * v[row] + 0.001 * grad[row] ** 2
        c1, c2 = 1 - 0.9 ** (k + 1), 1 - 0.999 ** (k + 1)
        expected.append(w[row] - 0.01 / c1 * m_new / (v_new.sqrt() / c2 ** 0.5 + 1e-8))
    adam_step(w, m, v, grad, taken, adam_schedule(20, 0.01, w))
    torch.testing.assert_close(w, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_the_first_constant_is_twice_the_linearised_multiplier_only_for_a_full_step_on_exact_gradients():
    """first_factor: 2x where the first step has FULL_STEP iterations of exact gradients, 4x where max_iter or
    a call budget cuts it shorter or the gradients are estimated (their noise inflates ||g||)."""
    from onnxattack.attacks._search import FULL_STEP, SearchSettings, first_factor

    full = SearchSettings(max_iter=FULL_STEP, binary_steps=10, initial_const=None, learning_rate=0.01)
    assert first_factor(full, spent=0, estimated=False) == 2.0
    assert first_factor(full, spent=0, estimated=True) == 4.0
    assert first_factor(SearchSettings(100, 4, None, 0.05), spent=0, estimated=False) == 4.0
    budgeted = SearchSettings(FULL_STEP, 10, None, 0.01, max_calls=2 * FULL_STEP)
    assert first_factor(budgeted, spent=0, estimated=False) == 2.0
    assert first_factor(budgeted, spent=2, estimated=False) == 4.0  # a clean forward spent: 999 iterations left
    assert first_factor(SearchSettings(FULL_STEP, 10, None, 0.01, max_calls=500), spent=0, estimated=False) == 4.0


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_the_first_iteration_sets_the_factor_times_the_linearised_multiplier(yeast, factor):
    """c0 = factor x 2 h(x) / ||grad_x h(x)||^2 per row, h the loss term at x (its gradient taken here
    independently, through x itself rather than w)."""
    from onnxattack.attacks._search import SearchSettings, _iterate, _start, to_box

    victim, x, target, labels, term = _hinge_problem(yeast, BOX)
    settings = SearchSettings(max_iter=20, binary_steps=2, initial_const=None, learning_rate=0.05)
    state = _start(x, target, settings, *BOX, torch.zeros(len(x), dtype=torch.long), factor)
    leaf = to_box(state.w, *BOX).detach().requires_grad_(True)  # the iterate the first iteration evaluates
    h = term(victim.attack_space(leaf), target, None)
    (g,) = torch.autograd.grad(h.sum(), leaf)
    expected = factor * 2 * h.detach() / g.flatten(1).pow(2).sum(dim=1)
    _iterate(state, victim, term, labels, settings, len(x))
    active = h.detach() > 0
    assert bool(active.any())
    torch.testing.assert_close(state.const[active], expected[active], rtol=1e-4, atol=0.0)
