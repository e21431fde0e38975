"""Property-based tests of the target parser, the target strategies and the target-file check.

Deterministic by default (derandomized, no example database); ONNXATTACK_PROPERTY_EXAMPLES=2000 and
ONNXATTACK_PROPERTY_RANDOM=1 explore further.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from onnxattack.errors import BadInputError
from onnxattack.targets import STRATEGIES, TOP_MODES, TargetSpec, check_target_file, make_targets, parse_target

SETTINGS = settings(
    max_examples=int(os.environ.get("ONNXATTACK_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    database=None,
    derandomize=os.environ.get("ONNXATTACK_PROPERTY_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Label names a user can address by name: no comma, no sign first, no edge spaces, not an index.
NAME_ALPHABET = st.sampled_from("abcxyz_.:#+-0123456789 éßЖ猫٣²")
NAMES = st.text(NAME_ALPHABET, min_size=1, max_size=6).filter(
    lambda name: name[0] not in "+-" and name == name.strip() and not (name.isascii() and name.isdigit())
    and not name.startswith("top:") and name not in STRATEGIES)


@st.composite
def label_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 9) -> list[str]:
    """Either the default labels '0', '1', ... or distinct names."""
    if draw(st.booleans()):
        return [str(i) for i in range(draw(st.integers(min_size, max_size)))]
    return draw(st.lists(NAMES, min_size=min_size, max_size=max_size, unique=True))


@st.composite
def batches(draw: st.DrawFn, max_rows: int = 12, min_labels: int = 1, max_labels: int = 9) -> tuple:
    """(predicted 0/1 int8 [N, L], scores float64 [N, L]); N may be 0."""
    rows = draw(st.integers(0, max_rows))
    labels = draw(st.integers(min_labels, max_labels))
    flat = draw(st.lists(st.booleans(), min_size=rows * labels, max_size=rows * labels))
    predicted = np.array(flat, dtype=np.int8).reshape(rows, labels)
    values = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 1.0, -1.0]),
                           min_size=rows * labels, max_size=rows * labels))
    return predicted, np.array(values, dtype=np.float64).reshape(rows, labels)


@st.composite
def explicit_specs(draw: st.DrawFn, num_labels: int) -> TargetSpec:
    chosen = draw(st.lists(st.integers(0, num_labels - 1), min_size=1, max_size=num_labels, unique=True))
    signs = draw(st.lists(st.booleans(), min_size=len(chosen), max_size=len(chosen)))
    show = tuple(i for i, shown in zip(chosen, signs, strict=True) if shown)
    hide = tuple(i for i, shown in zip(chosen, signs, strict=True) if not shown)
    return TargetSpec("explicit", show=show, hide=hide)


@st.composite
def specs(draw: st.DrawFn, num_labels: int) -> TargetSpec:
    kinds = ["named", "explicit"] + (["top"] if num_labels >= 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "named":
        return TargetSpec(draw(st.sampled_from(STRATEGIES)))
    if kind == "top":
        return TargetSpec("top", k=draw(st.integers(1, num_labels // 2)), mode=draw(st.sampled_from(TOP_MODES)))
    return draw(explicit_specs(num_labels))


SEEDS = st.integers(0, 2**32 - 1)


def _top_k_prediction(scores: np.ndarray, k: int) -> np.ndarray:
    """The predicted set of a ranking model: the k highest scores of each row."""
    predicted = np.zeros(scores.shape, dtype=np.int8)
    np.put_along_axis(predicted, np.argsort(-scores, axis=1, kind="stable")[:, :k], 1, axis=1)
    return predicted


# --- the strategies -----------------------------------------------------------------------------

@SETTINGS
@given(batch=batches(), strategy=st.sampled_from(STRATEGIES), seed=SEEDS)
def test_every_strategy_gives_an_int8_zero_one_matrix_of_the_right_shape(batch, strategy, seed):
    predicted, scores = batch
    target = make_targets(TargetSpec(strategy), predicted, scores, seed)
    assert target.dtype == np.int8 and target.shape == predicted.shape
    assert np.isin(target, (0, 1)).all()


@SETTINGS
@given(batch=batches(), seed=SEEDS)
def test_hide_single_hides_exactly_one_positive(batch, seed):
    predicted, scores = batch
    target = make_targets(TargetSpec("hide-single"), predicted, scores, seed)
    for row, goal in zip(predicted, target, strict=True):
        changed = np.flatnonzero(row != goal)
        if row.any():
            assert len(changed) == 1 and row[changed[0]] == 1 and goal[changed[0]] == 0
        else:
            assert len(changed) == 0


@SETTINGS
@given(batch=batches(), seed=SEEDS)
def test_hide_all_zeroes_and_extreme_flips_everything(batch, seed):
    predicted, scores = batch
    assert not make_targets(TargetSpec("hide-all"), predicted, scores, seed).any()
    assert (make_targets(TargetSpec("extreme"), predicted, scores, seed) == 1 - predicted).all()
    # Bool predictions read the same as 0/1 ones.
    assert (make_targets(TargetSpec("extreme"), predicted.astype(bool), scores, seed) == 1 - predicted).all()


@SETTINGS
@given(batch=batches(), seed=SEEDS)
def test_random_flips_one_positive_and_one_negative(batch, seed):
    predicted, scores = batch
    target = make_targets(TargetSpec("random"), predicted, scores, seed)
    for row, goal in zip(predicted, target, strict=True):
        changed = row != goal
        assert changed.sum() == int(row.any()) + int((row == 0).any())
        assert (row[changed] == 1 - goal[changed]).all()
        assert ((row[changed] == 1).sum() <= 1) and ((row[changed] == 0).sum() <= 1)


@SETTINGS
@given(data=st.data(), batch=batches(), seed=SEEDS)
def test_explicit_sets_exactly_the_named_labels(data, batch, seed):
    predicted, scores = batch
    spec = data.draw(explicit_specs(predicted.shape[1]))
    target = make_targets(spec, predicted, scores, seed)
    named = list(spec.show) + list(spec.hide)
    rest = np.setdiff1d(np.arange(predicted.shape[1]), named)
    assert (target[:, list(spec.show)] == 1).all() and (target[:, list(spec.hide)] == 0).all()
    assert (target[:, rest] == predicted[:, rest]).all()


@SETTINGS
@given(data=st.data(), batch=batches(min_labels=2), mode=st.sampled_from(TOP_MODES), seed=SEEDS)
def test_top_k_picks_k_labels_outside_the_predicted_set(data, batch, mode, seed):
    _, scores = batch
    k = data.draw(st.integers(1, scores.shape[1] // 2))
    predicted = _top_k_prediction(scores, k)
    target = make_targets(TargetSpec("top", k=k, mode=mode), predicted, scores, seed)
    assert target.dtype == np.int8 and target.shape == predicted.shape
    for row, goal, values in zip(predicted, target, scores, strict=True):
        assert goal.sum() == k and not (goal & row).any()
        chosen, others = values[goal == 1], values[(goal == 0) & (row == 0)]
        if others.size and mode == "best":
            assert chosen.min() >= others.max()
        if others.size and mode == "worst":
            assert chosen.max() <= others.min()


def test_top_k_with_too_few_labels_outside_is_refused_not_trivial():
    predicted, scores = np.array([[1, 1, 0]], dtype=np.int8), np.array([[3.0, 2.0, 1.0]])
    with pytest.raises(BadInputError, match="outside"):
        make_targets(TargetSpec("top", k=2), predicted, scores, 0)


# --- seeds and batch boundaries ------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), batch=batches(max_rows=16), seed=SEEDS, first=st.integers(0, 10**6))
def test_targets_do_not_depend_on_batch_boundaries(data, batch, seed, first):
    predicted, scores = batch
    spec = data.draw(specs(predicted.shape[1]))
    if spec.strategy == "top":
        predicted = _top_k_prediction(scores, spec.k)
    whole = make_targets(spec, predicted, scores, seed, first_index=first)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(predicted)), max_size=4)))
    bounds = [0, *cuts, len(predicted)]
    parts = [make_targets(spec, predicted[a:b], scores[a:b], seed, first_index=first + a)
             for a, b in zip(bounds, bounds[1:], strict=False)]
    assert (np.concatenate(parts) == whole).all()
    assert (make_targets(spec, predicted, scores, seed, first_index=first) == whole).all()


@SETTINGS
@given(seed=SEEDS, other=SEEDS, strategy=st.sampled_from(["random", "hide-single", "top:2:random"]))
def test_a_different_seed_changes_random_targets_somewhere(seed, other, strategy):
    assume(seed != other)
    labels = [str(i) for i in range(6)]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(64, 6))
    if strategy.startswith("top"):
        predicted = _top_k_prediction(scores, 2)
    else:  # every row has positives and negatives to choose from
        predicted = (scores > 0).astype(np.int8)
        predicted[:, :2], predicted[:, 4:] = 1, 0
    spec = parse_target(strategy, labels)
    first = make_targets(spec, predicted, scores, seed)
    assert (make_targets(spec, predicted, scores, seed) == first).all()
    assert (make_targets(spec, predicted, scores, other) != first).any()


# --- the parser ----------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), labels=label_lists())
def test_describe_parses_back_to_the_same_spec(data, labels):
    spec = data.draw(specs(len(labels)))
    assert parse_target(spec.describe(), labels) == spec
    assert parse_target(f"  {spec.describe()} ", labels) == spec


@SETTINGS
@given(data=st.data(), labels=st.lists(NAMES, min_size=1, max_size=9, unique=True))
def test_labels_by_name_and_by_index_give_the_same_spec(data, labels):
    spec = data.draw(explicit_specs(len(labels)))
    tokens = [(sign, index) for sign, group in (("+", spec.show), ("-", spec.hide)) for index in group]
    by_index = ",".join(f"{sign}{index}" for sign, index in tokens)
    by_name = ",".join(f"{sign}{labels[index]}" for sign, index in tokens)
    mixed = ",".join(f"{sign}{labels[index] if data.draw(st.booleans()) else index}" for sign, index in tokens)
    assert parse_target(by_index, labels) == parse_target(by_name, labels) == parse_target(mixed, labels) == spec


TOKEN_PIECES = st.sampled_from(["+", "-", "top:", ":", ",", " ", "0", "1", "9", "-1", "best", "random", "worst",
                                "hide-all", "²", "٣", "1_0", "\n", "\x00", "é", "a"])
WILD_TEXT = (st.text(max_size=30)
             | st.lists(TOKEN_PIECES | st.text(max_size=3), max_size=10).map("".join)
             | st.lists(st.tuples(st.sampled_from("+-"), st.text(max_size=5) | st.integers(-5, 20).map(str)),
                        max_size=5).map(lambda pairs: ",".join(sign + body for sign, body in pairs))
             | st.text(max_size=12).map(lambda tail: "top:" + tail))


@SETTINGS
@given(text=WILD_TEXT, labels=label_lists(min_size=0) | st.lists(st.text(max_size=4), max_size=6))
def test_any_text_parses_or_is_bad_input(text, labels):
    try:
        spec = parse_target(text, labels)
    except BadInputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert spec.strategy in (*STRATEGIES, "explicit", "top")
    assert all(0 <= i < len(labels) for i in spec.show + spec.hide)
    assert spec.strategy != "top" or 1 <= spec.k and 2 * spec.k <= len(labels)


@SETTINGS
@given(labels=label_lists(), extra=st.integers(0, 10**9), sign=st.sampled_from("+-"))
def test_an_index_out_of_range_is_bad_input(labels, extra, sign):
    with pytest.raises(BadInputError, match="out of range"):
        parse_target(f"{sign}{len(labels) + extra}", labels)


@SETTINGS
@given(labels=label_lists(), data=st.data())
def test_k_too_large_is_bad_input(labels, data):
    k = data.draw(st.integers(len(labels) // 2 + 1, len(labels) + 50))
    with pytest.raises(BadInputError, match="below the number of labels"):
        parse_target(f"top:{k}:{data.draw(st.sampled_from(TOP_MODES))}", labels)


@SETTINGS
@given(labels=label_lists(), data=st.data())
def test_a_label_both_shown_and_hidden_is_bad_input(labels, data):
    index = data.draw(st.integers(0, len(labels) - 1))
    other = data.draw(explicit_specs(len(labels)))
    name = labels[index] if data.draw(st.booleans()) else str(index)
    text = ",".join([f"+{name}", other.describe(), f"-{index}"])
    with pytest.raises(BadInputError, match="both shown and hidden"):
        parse_target(text, labels)


def test_names_win_over_indices_and_only_ascii_digits_are_indices():
    # A name wins over an index: with labels ['1', '0'], '+1' is the label named '1' (index 0).
    assert parse_target("+1", ["1", "0"]) == TargetSpec("explicit", show=(0,))
    with pytest.raises(BadInputError):
        parse_target("top:²", ["a", "b", "c"])
    with pytest.raises(BadInputError, match="unknown label"):
        parse_target("++2", ["a", "b", "c"])


# --- the target file -----------------------------------------------------------------------------

ZERO_ONE_DTYPES = st.sampled_from([np.bool_, np.int8, np.uint8, np.int64, np.float32, np.float64])


@SETTINGS
@given(rows=st.integers(0, 8), labels=st.integers(1, 8), spare=st.integers(0, 3), dtype=ZERO_ONE_DTYPES,
       seed=SEEDS)
def test_target_file_accepts_zero_one_arrays(rows, labels, spare, dtype, seed):
    values = np.random.default_rng(seed).integers(0, 2, size=(rows + spare, labels))
    checked = check_target_file(values.astype(dtype), rows, labels)
    assert checked.dtype == np.int8 and (checked == values).all()
    assert check_target_file(values.astype(dtype), None, labels).shape == values.shape


@SETTINGS
@given(rows=st.integers(1, 6), labels=st.integers(1, 6), seed=SEEDS,
       bad=st.sampled_from([2, -1, 0.5, np.nan, np.inf, -np.inf, 255]))
def test_target_file_refuses_other_values(rows, labels, seed, bad):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2, size=(rows, labels)).astype(np.float64)
    values[rng.integers(rows), rng.integers(labels)] = bad
    with pytest.raises(BadInputError, match="only 0 and 1"):
        check_target_file(values, rows, labels)


@SETTINGS
@given(shape=st.lists(st.integers(0, 4), max_size=4), labels=st.integers(1, 5), count=st.integers(0, 5))
def test_target_file_refuses_wrong_shapes(shape, labels, count):
    assume(not (len(shape) == 2 and shape[1] == labels and shape[0] >= count))
    with pytest.raises(BadInputError):
        check_target_file(np.zeros(shape, dtype=np.int8), count, labels)


@pytest.mark.parametrize("array", [
    np.array([["0", "1"], ["1", "0"]]), np.array([[b"0", b"1"]] * 2), np.zeros((2, 2), dtype="datetime64[s]"),
    np.zeros(2, dtype=[("a", "i4"), ("b", "i4")]), np.zeros((2, 2), dtype=object), np.zeros((2, 2), complex)])
def test_target_file_refuses_non_numbers(array):
    with pytest.raises(BadInputError, match="expected 0 and 1"):
        check_target_file(array, 2, 2)


def test_target_file_refuses_an_archive(tmp_path):
    np.savez(tmp_path / "targets.npz", np.zeros((2, 2)))
    with np.load(tmp_path / "targets.npz") as archive, pytest.raises(BadInputError, match="one array"):
        check_target_file(archive, 2, 2)
