"""ML-PGD, MLA-LP and TkML-AP (-U, -T) on the zoo models, success judged by onnxruntime.

Iterations are kept low so the file stays fast; users get the full-strength defaults.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main

from onnxattack import BadInputError, ConfigError, attack_arrays
from onnxattack.attacks import MLALP, MLPGD, MLDeepFool, TkMLTargeted, TkMLUntargeted
from onnxattack.attacks.ml_pgd import linf_bounds, within_l2
from onnxattack.attacks.mla_lp import linf_minimal_step
from onnxattack.loader import load
from onnxattack.scores import ScoreReader, TopKExclusionCriterion, criterion_for
from onnxattack.types import ScoresKind, Task

FAST_SEARCH = dict(max_iter=50, binary_steps=3, learning_rate=0.1)
FAST_CLI = {
    "ml-pgd": ["--eps", "0.15", "--norm", "inf", "--max-iter", "20"],
    "mla-lp": ["--max-iter", "20"],
    "tkml-u": ["--top-k", "2", "--max-iter", "50", "--binary-steps", "3", "--learning-rate", "0.1"],
    "tkml-t": ["--target", "top:2:best", "--max-iter", "50", "--binary-steps", "3", "--learning-rate", "0.1"],
}


@pytest.fixture(scope="module")
def mosaic(zoo_model, zoo_inputs):
    return load(zoo_model("digits-mosaic"), device="cpu"), zoo_inputs("digits-mosaic", 8)


@pytest.fixture(scope="module")
def yeast(zoo_model, zoo_inputs):
    return load(zoo_model("yeast-mlp"), device="cpu", box=(-1.0, 1.0)), zoo_inputs("yeast-mlp", 8)


@pytest.fixture(scope="module")
def ranker(zoo_model, zoo_inputs):
    return load(zoo_model("digits-ranker"), device="cpu"), zoo_inputs("digits-ranker", 8)


def deltas(out) -> np.ndarray:
    """x_adv - x of the attacked rows in float64, from the input dtype's own values."""
    rows = out.attacked
    return (out.x_adv[rows].astype(np.float64) - out.x[rows].astype(np.float64)).reshape(int(rows.sum()), -1)


def top_k_sets(scores: np.ndarray, k: int) -> list[set[int]]:
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


# --- ML-PGD ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.1, 1 / 3, 8 / 255])
def test_linf_bounds_hold_exactly_in_float32(eps):
    x = torch.rand(64, 257, generator=torch.Generator().manual_seed(1)).float()
    low, high = linf_bounds(x, eps, (0.0, 1.0))
    wide = x.double()
    assert bool(((wide - low.double()) <= eps).all()) and bool(((high.double() - wide) <= eps).all())
    assert bool((low >= 0).all()) and bool((high <= 1).all())
    # at most one float32 step inside the exact ball: the budget is not given away
    inner = (low > 0) & (high < 1)
    assert bool(((wide - low.double())[inner] > eps - 1e-7).all())


def test_within_l2_pulls_rounded_points_back_into_the_ball():
    x = torch.rand(16, 300, generator=torch.Generator().manual_seed(2)).float() * 100
    direction = torch.randn(16, 300, generator=torch.Generator().manual_seed(3))
    candidate = x + direction / direction.norm(dim=1, keepdim=True) * 0.7  # on the sphere, then rounded
    inside = within_l2(x, candidate, 0.7)
    assert bool(((inside.double() - x.double()).norm(dim=1) <= 0.7).all())
    assert bool(((inside.double() - x.double()).norm(dim=1) > 0.7 * (1 - 1e-4)).all())


def test_ml_pgd_linf_succeeds_inside_the_exact_budget(mosaic):
    model, x = mosaic
    torch.manual_seed(0)  # the random starts come from torch's generator
    eps = 0.15
    out = attack_arrays(model, x, MLPGD(eps=eps, max_iter=20), "hide-single")
    assert out.attacked.sum() >= 6
    assert out.success[out.attacked].mean() >= 0.9
    linf = np.abs(deltas(out)).max(axis=1)
    assert (linf <= eps).all() and (out.linf[out.attacked] <= np.float32(eps)).all()
    assert out.x_adv.min() >= 0.0 and out.x_adv.max() <= 1.0
    assert out.torch_agrees.all()
    # rows leave the batch once they succeed: each step is a forward and a backward, plus a last forward
    calls, steps = out.model_calls[out.attacked], out.iterations[out.attacked]
    assert ((calls >= 2 * steps + 1) & (calls <= 2 * steps + 2)).all()
    assert calls.mean() < 2 * 20 + 1


def test_ml_pgd_l2_budget_and_restarts(yeast):
    model, x = yeast
    torch.manual_seed(0)
    eps = 1.0
    out = attack_arrays(model, x, MLPGD(eps=eps, norm="2", max_iter=30, restarts=2), "random", box=(-1.0, 1.0))
    assert out.success[out.attacked].mean() >= 0.9
    assert (np.linalg.norm(deltas(out), axis=1) <= eps).all()
    assert out.x_adv.min() >= -1.0 and out.x_adv.max() <= 1.0


def test_ml_pgd_failed_rows_keep_their_best_iterate_inside_the_budget(mosaic):
    model, x = mosaic
    torch.manual_seed(0)
    eps = 0.01  # far too small for most rows
    out = attack_arrays(model, x, MLPGD(eps=eps, max_iter=5, restarts=2), "hide-single")
    assert not out.success[out.attacked].all()
    assert (np.abs(deltas(out)).max(axis=1) <= eps).all()
    failed = out.attacked & ~out.success
    assert (out.iterations[failed] == 2 * 5).all()  # both restarts ran every step


def test_ml_pgd_checks_its_hyperparameters():
    assert MLPGD().eps == pytest.approx(8 / 255) and MLPGD(norm="2").eps == 0.5
    assert MLPGD(eps=0.2, max_iter=10).step_size == pytest.approx(0.05)
    for bad in (dict(norm="1"), dict(eps=-1.0), dict(restarts=0), dict(step_size=0.0)):
        with pytest.raises(ConfigError):
            MLPGD(**bad)


# --- MLA-LP ---------------------------------------------------------------------------------------

def test_linf_minimal_step_solves_the_lp():
    a = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    b = np.array([3.0, 1.0])
    step = linf_minimal_step(a, b, np.full(3, -10.0), np.full(3, 10.0))
    assert (a @ step >= b - 1e-7).all()
    assert np.abs(step).max() == pytest.approx(1.0)  # a_1 . r <= 3 ||r||_inf, so 1 is the least
    # a box that forbids the target: the least violation, not no step
    boxed = linf_minimal_step(a, b, np.full(3, -0.5), np.full(3, 0.5))
    assert np.allclose(boxed[:2], [0.5, 0.5], atol=1e-7)


def test_mla_lp_beats_ml_deepfool_in_linf(mosaic):
    model, x = mosaic
    lp = attack_arrays(model, x, MLALP(max_iter=20), "hide-single")
    deepfool = attack_arrays(model, x, MLDeepFool(max_iter=20), "hide-single")
    assert lp.success[lp.attacked].mean() >= 0.9
    assert lp.torch_agrees.all()
    both = lp.success & deepfool.success
    assert both.sum() >= 6
    assert lp.linf[both].mean() <= deepfool.linf[both].mean()
    assert lp.x_adv.min() >= 0.0 and lp.x_adv.max() <= 1.0


def test_mla_lp_on_a_tabular_model_in_its_own_box(yeast):
    model, x = yeast
    out = attack_arrays(model, x, MLALP(max_iter=20), "random", box=(-1.0, 1.0))
    assert out.success[out.attacked].mean() >= 0.9
    assert out.x_adv.min() >= -1.0 and out.x_adv.max() <= 1.0


# --- TkML-AP --------------------------------------------------------------------------------------

def test_top_k_exclusion_criterion():
    criterion = TopKExclusionCriterion(k=2)
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [5.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 5.0]])
    leave = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    assert criterion.reached_tensor(scores, leave).tolist() == [False, True, True]
    assert criterion.predict_tensor(scores)[2].tolist() == [False, True, False, True]
    # three labels in S leave one outside: too few to fill a top 2, whatever the scores
    assert not bool(criterion.reached_tensor(torch.tensor([[0.0, 0.0, 0.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))[0])
    assert not bool(criterion.reached_tensor(scores[:1], torch.zeros(1, 4))[0])  # an empty S is no target
    close, leave_first = torch.tensor([[2.0, 2.0005, 0.0]]), torch.tensor([[1, 0, 0]])
    reader = ScoreReader.create(ScoresKind.LOGITS, None, None)
    assert bool(TopKExclusionCriterion(k=1).reached_tensor(close, leave_first)[0])
    guarded = TopKExclusionCriterion(k=1).in_attack_space(reader)  # the attacks aim past the float guard
    assert guarded.gap > 0 and not bool(guarded.reached_tensor(close, leave_first)[0])
    assert criterion_for(Task.TOP_K_EXCLUSION, reader, 3) == TopKExclusionCriterion(k=3)


def test_tkml_u_pushes_the_predicted_top_k_out_on_a_ranker(ranker):
    model, x = ranker
    out = attack_arrays(model, x, TkMLUntargeted(**FAST_SEARCH), top_k=3)  # default target: the top 3
    assert out.attacked.all() and np.array_equal(out.y_target, out.y_pred)
    assert out.success.mean() >= 0.9
    for won, before, after, leave in zip(out.success, top_k_sets(out.scores, 3), top_k_sets(out.scores_adv, 3),
                                         out.y_target, strict=True):
        assert before == set(np.flatnonzero(leave).tolist())
        if won:
            assert not after & before  # onnxruntime's top 3 shares no label with the clean top 3


def test_tkml_u_on_a_classifier_with_one_label_to_hide(mosaic):
    model, x = mosaic
    out = attack_arrays(model, x, TkMLUntargeted(**FAST_SEARCH), "hide-single", top_k=2)
    assert (out.y_target.sum(axis=1) == 1).all()
    assert (out.y_target <= out.y_pred).all()
    assert out.success.mean() >= 0.9
    for won, after, leave in zip(out.success, top_k_sets(out.scores_adv, 2), out.y_target, strict=True):
        assert won == (int(np.flatnonzero(leave)[0]) not in after)


def test_tkml_u_takes_only_labels_to_push_out(mosaic):
    model, x = mosaic
    for target in ("random", "extreme", "+3", "top:2"):
        with pytest.raises(BadInputError):
            attack_arrays(model, x[:2], TkMLUntargeted(max_iter=2, binary_steps=1), target, top_k=2)
    out = attack_arrays(model, x[:2], TkMLUntargeted(max_iter=2, binary_steps=1), "-3,-5", top_k=2)
    assert (out.y_target[:, [3, 5]] == 1).all() and out.y_target.sum() == 4


@pytest.mark.parametrize("fixture,k", [("ranker", 3), ("mosaic", 2)])
def test_tkml_t_puts_the_targets_in_the_top_k(request, fixture, k):
    model, x = request.getfixturevalue(fixture)
    out = attack_arrays(model, x, TkMLTargeted(**FAST_SEARCH), f"top:{k}:best")
    assert out.success[out.attacked].mean() >= 0.9
    for won, after, goal in zip(out.success, top_k_sets(out.scores_adv, k), out.y_target, strict=True):
        if won:
            assert after == set(np.flatnonzero(goal).tolist())


# --- command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(FAST_CLI))
def test_new_methods_through_the_cli(zoo_model, zoo_inputs, tmp_path, method):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 4))
    out = tmp_path / "r.h5"
    result = CliRunner().invoke(main, ["attack", str(zoo_model("digits-mosaic")), str(tmp_path / "x.npy"), "-o",
                                       str(out), "--method", method, "--json", "--quiet", *FAST_CLI[method]],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["success_rate"] >= 0.75
    with h5py.File(out, "r") as handle:
        params = json.loads(handle.attrs["params"])
        assert handle.attrs["method"] == method
        assert params["max_iter"] == int(FAST_CLI[method][FAST_CLI[method].index("--max-iter") + 1])
        if method == "ml-pgd":
            assert params["eps"] == 0.15 and params["norm"] == "inf" and params["restarts"] == 1
            delta = handle["x_adv"][:].astype(np.float64) - handle["x"][:].astype(np.float64)
            assert np.abs(delta).max() <= 0.15
        if method == "tkml-u":
            assert handle.attrs["task"] == "top-k-exclusion" and handle.attrs["target"] == "hide-all"
            assert np.array_equal(handle["y_target"][:], handle["y_pred"][:])


def test_the_cli_refuses_budget_options_elsewhere_and_unknown_norms(zoo_model, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 16, 16), dtype=np.float32))
    base = ["attack", str(zoo_model("digits-mosaic")), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.h5")]
    refused = CliRunner().invoke(main, [*base, "--method", "ml-cw", "--eps", "0.1"])
    assert refused.exit_code == 2 and "--eps" in refused.output and "ml-cw" in refused.output
    unknown = CliRunner().invoke(main, [*base, "--method", "ml-pgd", "--norm", "1"])
    assert unknown.exit_code == 2 and "--norm" in unknown.output


def test_top_k_exclusion_targets_no_perturbation_can_reach_are_refused(zoo_model, zoo_inputs, tmp_path):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-ranker", 4))
    np.save(tmp_path / "empty.npy", np.zeros((4, 10), dtype=np.int8))
    base = ["attack", str(zoo_model("digits-ranker")), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.h5"),
            "--method", "tkml-u"]
    empty = CliRunner().invoke(main, [*base, "--target-file", str(tmp_path / "empty.npy")])
    assert empty.exit_code == 2 and "names no label to push out" in empty.output
    assert not (tmp_path / "r.h5").exists()
    crowded = CliRunner().invoke(main, [*base, "--target=-0,-1", "--top-k", "9"])
    assert crowded.exit_code == 2 and "fewer than k = 9" in crowded.output


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_ml_pgd_with_a_budget_beyond_the_box_does_not_overshoot(mosaic, norm):
    """eps far larger than the box: default steps and starts follow the box, so success is not lost."""
    model, x = mosaic
    result = attack_arrays(model, x, MLPGD(eps=1e9, norm=norm, max_iter=20), "hide-single")
    assert result.success[result.attacked].mean() == 1.0
