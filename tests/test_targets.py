"""Target strategies and the target parser."""

from __future__ import annotations

import numpy as np
import pytest

from onnxattack.errors import BadInputError
from onnxattack.targets import check_target_file, make_targets, parse_target

LABELS = ["cat", "dog", "car", "sky", "sea"]
PRED = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=np.int8)
SCORES = np.array([[3.0, 2.0, -1.0, 0.5, -2.0], [-1.0, -3.0, 2.0, -0.2, 1.0], [-1, -2, -3, -4, -5.0]])


def test_hide_single_hides_one_positive_and_keeps_the_rest():
    target = make_targets(parse_target("hide-single", LABELS), PRED, SCORES, seed=0)
    changed = target != PRED
    assert (changed.sum(axis=1) == [1, 1, 0]).all()  # the third row has no positive: skipped
    assert (PRED[changed] == 1).all() and (target[changed] == 0).all()


def test_hide_all_random_extreme():
    assert not make_targets(parse_target("hide-all", LABELS), PRED, SCORES, 0).any()
    extreme = make_targets(parse_target("extreme", LABELS), PRED, SCORES, 0)
    assert (extreme == 1 - PRED).all()
    random = make_targets(parse_target("random", LABELS), PRED, SCORES, 0)
    flips = random != PRED
    assert (flips.sum(axis=1) == [2, 2, 1]).all()
    assert ((PRED[flips] == 1) == (random[flips] == 0)).all()


def test_targets_do_not_depend_on_batch_boundaries():
    spec = parse_target("random", LABELS)
    whole = make_targets(spec, PRED, SCORES, seed=7)
    parts = np.concatenate([make_targets(spec, PRED[:1], SCORES[:1], seed=7, first_index=0),
                            make_targets(spec, PRED[1:], SCORES[1:], seed=7, first_index=1)])
    assert (whole == parts).all()
    assert not (make_targets(spec, np.repeat(PRED[:1], 20, 0), np.repeat(SCORES[:1], 20, 0), 8)
                == make_targets(spec, np.repeat(PRED[:1], 20, 0), np.repeat(SCORES[:1], 20, 0), 9)).all()


def test_explicit_targets_by_index_and_name():
    spec = parse_target("+sky,-0", LABELS)
    assert spec.show == (3,) and spec.hide == (0,)
    target = make_targets(spec, PRED, SCORES, 0)
    assert (target[:, 3] == 1).all() and (target[:, 0] == 0).all()
    assert (target[:, [1, 2, 4]] == PRED[:, [1, 2, 4]]).all()


def test_top_k_targets_pick_outside_the_current_top_k():
    top2 = np.array([[1, 1, 0, 0, 0]], dtype=np.int8)
    scores = SCORES[:1]
    best = make_targets(parse_target("top:2:best", LABELS), top2, scores, 0)[0]
    worst = make_targets(parse_target("top:2:worst", LABELS), top2, scores, 0)[0]
    assert list(np.flatnonzero(best)) == [2, 3]  # highest-scored outside {cat, dog}: sky 0.5, car -1
    assert list(np.flatnonzero(worst)) == [2, 4]  # lowest: sea -2, car -1
    random = make_targets(parse_target("top:2:random", LABELS), top2, scores, 0)[0]
    assert random.sum() == 2 and not random[:2].any()


@pytest.mark.parametrize("text,message", [
    ("hide-some", "expected"), ("+unicorn", "unknown label"), ("+9", "out of range"),
    ("+1,-1", "both shown and hidden"), ("top:x", "top:K"), ("top:2:middle", "mode"), ("top:5", "below"),
])
def test_bad_targets_are_bad_input(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_target(text, LABELS)


def test_target_file_is_checked():
    with pytest.raises(BadInputError, match="expected"):
        check_target_file(np.zeros((3, 4)), 3, 5)
    with pytest.raises(BadInputError, match="only 0 and 1"):
        check_target_file(np.full((3, 5), 2), 3, 5)
    with pytest.raises(BadInputError, match="rows"):
        check_target_file(np.zeros((2, 5)), 3, 5)
    assert check_target_file(np.ones((3, 5)), 3, 5).dtype == np.int8
