"""A bounded, seeded fuzz of the model loader: mutated ONNX files load, or fail with exit code 2 or 3.

Every mutant is read the way the CLI reads a model (read_model + describe, inspect_model, load) in one
sandboxed worker process, so a segfault, a hang or a runaway allocation is pinned on its mutant instead
of killing pytest. `make fuzz` (bench/fuzz.py) runs the same generator for thousands of mutants.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattack.errors import BadInputError, UnsupportedModelError
from onnxattack.model import detect_scores_kind, final_op, read_model
from onnxattack.types import ScoresKind

from .fuzz_models import SUITE_MODELS, base_models, make_mutant, run_fuzz

SEED = 7
MUTANTS = 250

# Failures whose fix belongs to files this test's author may not change: mutant index -> reason.
# They turn the test into an xfail; any other failure fails it.
KNOWN_OUTSIDE: dict[int, str] = {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_fuzz(SEED, MUTANTS, SUITE_MODELS, work_dir=tmp_path_factory.mktemp("fuzz"), timeout_s=60.0)


def test_mutated_models_load_or_fail_with_exit_2_or_3(outcomes):
    assert [o.index for o in outcomes] == list(range(MUTANTS))
    failures = [o for o in outcomes if not o.accepted]
    unknown = [o for o in failures if o.index not in KNOWN_OUTSIDE]
    assert not unknown, "\n".join(o.describe(SEED) + "\n" + o.trace for o in unknown)
    if failures:
        pytest.xfail("; ".join(f"mutant {o.index}: {KNOWN_OUTSIDE[o.index]}" for o in failures))


def test_the_fuzz_reaches_every_outcome_and_base_model(outcomes):
    counts = Counter(o.outcome for o in outcomes)
    assert counts["ok"] >= 5 and counts["exit2"] >= 20 and counts["exit3"] >= 20, counts
    assert {o.base for o in outcomes} == set(SUITE_MODELS)
    stages = Counter(o.stage for o in outcomes if o.outcome in ("exit2", "exit3"))
    assert stages["read_model"] and (stages["inspect"] or stages["load"]), stages


def test_mutants_are_a_function_of_seed_and_index(tmp_path):
    bases = base_models(tmp_path, ("sigmoid", "fixed-softmax"))
    first = [make_mutant(bases, SEED, index) for index in range(40)]
    again = [make_mutant(bases, SEED, index) for index in range(40)]
    assert [m.data for m in first] == [m.data for m in again]
    assert [m.recipe for m in first] == [m.recipe for m in again]
    assert len({hashlib.sha256(m.data).digest() for m in first}) >= 35
    other = [make_mutant(bases, SEED + 1, index) for index in range(5)]
    assert [m.data for m in other] != [m.data for m in first[:5]]


def test_a_crash_is_pinned_on_its_mutant_and_the_run_goes_on(tmp_path):
    # Both workers abort before any heavy import, which keeps this test cheap.
    crashed = run_fuzz(SEED, 2, ("sigmoid",), work_dir=tmp_path, crash_at=(0, 1))
    assert [(o.index, o.outcome) for o in crashed] == [(0, "crash"), (1, "crash")]
    assert all("exit status" in o.message and o.recipe for o in crashed)


# --- what the fuzz found, as plain regression cases (read_model alone, in this process) -----------

def _sigmoid_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with_weight(edit: Callable[[TensorProto], None]) -> onnx.ModelProto:
    model = _sigmoid_model()
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "W")
    edit(weight)
    model.graph.initializer.append(weight)
    model.graph.node.insert(0, helper.make_node("MatMul", ["x", "W"], ["h"]))
    model.graph.node[1].input[0] = "h"
    return model


def _with_input_dims(dims: list) -> onnx.ModelProto:
    model = _sigmoid_model()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, dims))
    return model


def _with_function(recursive: bool) -> onnx.ModelProto:
    model = _sigmoid_model()
    body = [helper.make_node("Fn" if recursive else "Relu", ["a"], ["b"], domain="local" if recursive else "")]
    model.functions.append(helper.make_function("local", "Fn", ["a"], ["b"], body, [helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    node = model.graph.node[0]
    node.op_type, node.domain = "Fn", "local"
    if not recursive:
        node.input.append("x")  # two inputs to a function of one
    return model


def _external_offset(weight: TensorProto) -> None:
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "w.bin"), ("offset", "abc")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value


REFUSED = {
    "raw data too long": (lambda: _with_weight(lambda w: setattr(w, "raw_data", w.raw_data * 2)), "cannot be read"),
    "unknown data type": (lambda: _with_weight(lambda w: setattr(w, "data_type", 99)), "unknown data type"),
    "huge weight dims": (lambda: _with_weight(lambda w: w.dims.__setitem__(0, 2**40)), "more values than|too small"),
    "negative weight dim": (lambda: _with_weight(lambda w: w.dims.__setitem__(0, -1)), "(?i)negative dim"),
    "external data offset": (lambda: _with_weight(_external_offset), "external-data fields"),
    "zero sample dim": (lambda: _with_input_dims(["N", 0]), "dim of 0"),  # a batch dim of 0 or -1 is dynamic
    "negative input dim": (lambda: _with_input_dims(["N", -2]), "negative dim"),
    "huge input dims": (lambda: _with_input_dims(["N", 2**40]), "too large"),
    "recursive function": (lambda: _with_function(recursive=True), "(?i)cycle"),
    "function arity": (lambda: _with_function(recursive=False), "declares"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_damaged_models_are_refused_with_one_line(case, tmp_path):
    build, message = REFUSED[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(build().SerializeToString())
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        read_model(path)
    assert "\n" not in str(caught.value)


def test_text_that_is_not_utf8_is_bad_input(tmp_path):
    model = _sigmoid_model()
    helper.set_model_props(model, {"labels": "MARKER"})
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(b"MARKER", b"\xff\xfe\xfdAB\xc3"))
    with pytest.raises(BadInputError, match="not UTF-8"):
        read_model(path)


def test_a_pass_through_node_without_input_ends_the_search(tmp_path):
    model = _sigmoid_model()
    model.graph.node.append(helper.make_node("Identity", [], ["z"], domain="custom"))
    assert final_op(model, "z").op_type == "Identity" and detect_scores_kind(model, "z") is ScoresKind.LOGITS
    model.graph.node[-1].domain = ""
    assert final_op(model, "z") is None
