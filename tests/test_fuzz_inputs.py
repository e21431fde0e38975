"""A bounded, seeded fuzz of the input containers: mutated .npy / .npz / .h5 files fed to `onnxattack
attack` end in exit 0, or exit 2 / 3 with one stderr line and no traceback. `make fuzz` (bench/fuzz.py)
runs the same generator for thousands of mutants."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from .fuzz_inputs import INPUT_BASES, base_inputs, make_input_mutant
from .fuzz_models import run_fuzz

SEED = 2
MUTANTS = 500  # about 10 ms each once the worker has imported torch
# What this seed's mutants found, each fixed in inputs.py: index -> what the refusal must say.
FOUND = {
    109: "outside its shape or listed twice: a damaged chunk index",  # libhdf5 segfaulted reading it
    465: "has a chunk of 0 bytes",  # libhdf5 segfaulted reading it
    185: "holds no batch of inputs (shape [4, 0])",  # a ValueError traceback from the range scan
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_fuzz(SEED, MUTANTS, INPUT_BASES, work_dir=tmp_path_factory.mktemp("fuzz"), timeout_s=60.0,
                    worker_module="tests.fuzz_inputs")


def test_mutated_inputs_end_in_exit_0_2_or_3_with_one_line(outcomes):
    assert [o.index for o in outcomes] == list(range(MUTANTS))
    failures = [o for o in outcomes if not o.accepted]
    assert not failures, "\n".join(o.describe(SEED) + "\n" + o.trace for o in failures)


def test_the_fuzz_reaches_every_container_and_outcome(outcomes):
    counts = Counter(o.outcome for o in outcomes)
    assert counts["ok"] >= 20 and counts["exit2"] >= 200, counts
    assert {o.base for o in outcomes} == set(INPUT_BASES)
    kinds = Counter(step.split(":")[0] for o in outcomes for step in o.recipe)
    assert kinds["header"] >= 20 and kinds["npz"] >= 10 and kinds["truncate"] >= 10, kinds


def test_what_the_fuzz_found_stays_refused(outcomes):
    by_index = {o.index: o for o in outcomes}
    for index, message in FOUND.items():
        assert by_index[index].outcome == "exit2" and message in by_index[index].message, by_index[index]


def test_input_mutants_are_a_function_of_seed_and_index(tmp_path):
    bases = base_inputs(tmp_path, INPUT_BASES)
    first = [make_input_mutant(bases, SEED, index) for index in range(40)]
    again = [make_input_mutant(base_inputs(tmp_path / "again", INPUT_BASES), SEED, index) for index in range(40)]
    assert [m.data for m in first] == [m.data for m in again]
    assert len({hashlib.sha256(m.data).digest() for m in first}) >= 35
