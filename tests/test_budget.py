"""--budget CALLS: the constant-search methods stop each row at its model-call budget, keeping its best iterate."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main as cli

from onnxattack import MLCarliniWagner, attack_arrays, load
from onnxattack.errors import ConfigError


@pytest.fixture(scope="module")
def mosaic(zoo_model, zoo_inputs):
    return load(zoo_model("digits-mosaic"), device="cpu"), zoo_inputs("digits-mosaic", 8)


def test_calls_never_exceed_the_budget_and_more_calls_buy_quality(mosaic) -> None:
    model, x = mosaic
    results = {budget: attack_arrays(model, x, MLCarliniWagner(budget=budget), target="hide-single")
               for budget in (60, 300)}
    for budget, result in results.items():
        attacked = result.attacked
        assert attacked.any()
        assert (result.model_calls[attacked] <= budget).all(), (budget, result.model_calls)
    small, large = results[60], results[300]
    assert large.model_calls.sum() > small.model_calls.sum()
    # the same per-row search, cut later: a row never loses its success, and its best L2 never grows
    assert (large.success >= small.success).all()
    both = small.success & large.success
    assert both.any()
    assert (large.l2[both] <= small.l2[both] + 1e-6).all()
    assert large.success.mean() >= small.success.mean()


def test_a_budget_too_short_for_a_second_constant_step_still_reaches_every_row(mosaic) -> None:
    # 250 calls = 125 iterations, less than one constant step: a row crosses in its first step or never.
    # The first constant stays at 4x the linearised multiplier for a step cut this short (first_factor): started
    # at 2x, as a full 1000-iteration step is, half of these rows never crossed.
    model, x = mosaic
    result = attack_arrays(model, x, MLCarliniWagner(budget=250), target="hide-single")
    attacked = result.attacked
    assert attacked.sum() >= 6
    assert result.success[attacked].all(), result.success  # onnxruntime's verdict
    assert (result.model_calls[attacked] <= 250).all()


def test_a_budget_of_less_than_one_iteration_returns_the_inputs(mosaic) -> None:
    model, x = mosaic
    result = attack_arrays(model, x[:3], MLCarliniWagner(budget=1), target="hide-single")
    assert (result.model_calls <= 1).all() and not result.success.any()
    np.testing.assert_array_equal(result.x_adv, result.x)


def test_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        MLCarliniWagner(budget=0)


def test_cli_budget_is_stored_and_held(zoo_model, zoo_inputs, tmp_path) -> None:
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 4))
    out = tmp_path / "r.h5"
    done = CliRunner().invoke(cli, ["attack", str(zoo_model("digits-mosaic")), str(tmp_path / "x.npy"), "-o", str(out),
                                    "--budget", "100"])
    assert done.exit_code == 0, done.output
    with h5py.File(out, "r") as handle:
        assert '"budget": 100' in handle.attrs["params"]
        calls = handle["model_calls"][:][handle["attacked"][:].astype(bool)]
        assert (calls <= 100).all()
    assert f"call budget 100 per input; used mean {calls.mean():.0f}, max {calls.max()}" in " ".join(
        done.output.split()), done.output
