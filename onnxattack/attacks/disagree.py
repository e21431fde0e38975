"""disagree: the smallest perturbation after which two builds of one model (A, B: a float export and its
int8 build, say) predict different label sets.

Per shared label l, with A's and B's decision margins a_l, b_l in logit units (positive: predicted),
    h_l = min(relu(kappa - a_l) + relu(kappa + b_l),  relu(kappa + a_l) + relu(kappa - b_l)),
zero exactly where one model predicts l and the other does not, each by kappa. The problem per row is
ML-CW's, min ||r||^2 + c * h(x + r) with x + r kept in the box through tanh, solved by the same
per-row constant search (_search.constant_search: Adam, first constant from the linearised multiplier,
bisection once a constant succeeds), through both torch graphs at once (estimated gradients where a
member's graph does not convert).

Which label to split is the hard part: min over labels of h_l follows whichever label is currently
cheapest and settles far from the nearest one. So each row is searched `candidates` + 1 times side by
side: once on each of the `candidates` labels whose boundary is nearest by linearisation
(|u_l| / ||grad u_l||, u = (a + b) / 2: the builds are near-identical, their boundaries close), and once
on min_l h_l; the smallest perturbation that succeeds wins. On digits-mosaic float vs int8 (32 test
inputs, 100 iterations x 5 constant steps, every search confirmed by onnxruntime) the min over labels
alone ended at mean L2 0.45; with 3 candidates beside it 0.35, with 5 0.32, with all 10 labels 0.31.

The first disagreement along any path from x lies on one of the two builds' decision boundaries (they
agree at x), so its distance is bounded below by the nearest boundary of either build: two builds whose
scores differ by 0.1 are not split by a perturbation much smaller than one that flips a label.

model_calls: per row, the ranking's forward and backward passes, and 2 per model (A and B) per iteration of
each of its searches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import ConfigError
from ..scores import FLOAT_GUARD, DisagreementCriterion, ScoreReader
from ..types import ScoresKind, Task
from ..victim import Victim
from ._checks import at_least_one, number
from ._search import SearchSettings, constant_search
from .base import AttackResult, Option, PairAttack, PairVictim

_ANY_LABEL = -1
_SHORTLIST = 4  # labels ranked by gradient per candidate kept (after a first cut on margins alone)
# The pair's margins are already in logit units around 0: read as logits with threshold 0.
_MARGINS = ScoreReader.create(ScoresKind.LOGITS, 0.0, None)


class _JointMargins:
    """The pair as one victim's attack tensor: [A's margins, B's margins] of the expanded batch, each call's
    rows named to both members as the original rows they copy (query ledgers, pass-through inputs)."""

    def __init__(self, pair: PairVictim, originals: torch.Tensor) -> None:
        self.pair = pair
        self.originals = originals  # expanded row -> the row of the batch it copies
        self.selected: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.selected if self.selected is not None else torch.arange(len(self.originals))
        with self.pair.on_rows(self.originals[ids.cpu()].numpy()):
            return torch.cat(self.pair.margins(x), dim=1)

    @contextlib.contextmanager
    def select(self, ids: object) -> Iterator[None]:
        self.selected = torch.as_tensor(ids).long()
        try:
            yield
        finally:
            self.selected = None


class Disagree(PairAttack):
    """The smallest L2 perturbation after which A and B predict different label sets (see the module)."""

    name = "disagree"
    task = Task.CLASSIFICATION
    options = {
        "binary_steps": Option(int, "constant search steps"),
        "learning_rate": Option(float, "Adam learning rate"),
        "kappa": Option(float, "margin (logit units) by which A and B must sit on opposite sides of a threshold"),
        "candidates": Option(int, "labels searched separately per input (the nearest by linearisation), "
                                  "beside one search over every label"),
    }

    def __init__(self, max_iter: int = 100, binary_steps: int = 5, learning_rate: float = 1e-2,
                 kappa: float = FLOAT_GUARD, candidates: int = 3) -> None:
        self.max_iter = at_least_one("max_iter", max_iter)
        self.binary_steps = at_least_one("binary_steps", binary_steps)
        self.learning_rate = number("learning_rate", learning_rate, positive=True)
        self.kappa = number("kappa", kappa, positive=False)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
            raise ConfigError("candidates", f"candidates must be a whole number of at least 0, got {candidates!r}")
        self.candidates = candidates

    def run(self, pair: PairVictim, x: torch.Tensor) -> AttackResult:
        n = len(x)
        criterion = DisagreementCriterion(margin=self.kappa)
        nearest, ranking_calls = self._nearest_labels(pair, x)
        copies = nearest.shape[1] + 1
        labels = torch.cat([nearest, torch.full((n, 1), _ANY_LABEL, dtype=torch.long, device=x.device)], dim=1)
        labels = labels.reshape(-1)
        originals = torch.arange(n).repeat_interleave(copies)
        expanded = x.repeat_interleave(copies, dim=0)

        def loss_term(margins: torch.Tensor, goal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            per_label = criterion.hinge(margins)
            chosen = labels[rows]
            picked = per_label.gather(1, chosen.clamp_min(0).view(-1, 1)).squeeze(1)
            return torch.where(chosen == _ANY_LABEL, per_label.amin(dim=1), picked)

        joint = Victim(_JointMargins(pair, originals), _MARGINS, pair.box, progress=pair.progress)
        settings = SearchSettings(self.max_iter, self.binary_steps, None, self.learning_rate)
        estimated = pair.a.jacobian is not None or pair.b.jacobian is not None
        found = constant_search(joint, expanded, torch.zeros(len(expanded), 1, device=x.device), loss_term,
                                criterion, settings, estimated=estimated)
        success = found.success.view(n, copies)
        l2 = torch.where(success, found.l2.view(n, copies), torch.full_like(found.l2.view(n, copies), float("inf")))
        best = torch.where(success.any(dim=1), l2.argmin(dim=1), torch.full((n,), copies - 1, device=x.device))
        pick = torch.arange(n, device=x.device) * copies + best
        calls = ranking_calls + 2 * found.model_calls.view(n, copies).sum(dim=1)  # 2 models per pass
        return AttackResult.from_inputs(x, found.x_adv[pick], success.any(dim=1), found.iterations[pick], calls)

    def _nearest_labels(self, pair: PairVictim, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the `candidates` shared labels whose boundary is nearest by linearisation, and the model
        calls that took per row (one forward of each model, and a backward of each per label ranked)."""
        n, shared = len(x), int(pair.columns_a.numel())
        count = min(self.candidates, shared)
        if count == 0:
            return torch.zeros((n, 0), dtype=torch.long, device=x.device), torch.full((n,), 2, device=x.device)
        shortlist = min(shared, _SHORTLIST * count)
        probe = x.detach().clone().requires_grad_(True)
        with pair.on_rows(None):
            margin_a, margin_b = pair.margins(probe)
        middle = (margin_a + margin_b) / 2
        listed = middle.detach().abs().argsort(dim=1)[:, :shortlist]
        distances = torch.empty((n, shortlist), dtype=x.dtype, device=x.device)
        for j in range(shortlist):
            picked = middle.gather(1, listed[:, j:j + 1]).squeeze(1)
            (grad,) = torch.autograd.grad(picked.sum(), probe, retain_graph=j + 1 < shortlist)
            distances[:, j] = picked.detach().abs() / grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        order = distances.argsort(dim=1)[:, :count]
        calls = torch.full((n,), 2 + 2 * shortlist, dtype=torch.long, device=x.device)
        return listed.gather(1, order), calls
