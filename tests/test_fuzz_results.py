"""A bounded sample of the result-file fuzz (tests/fuzz_results.py; `make fuzz` runs thousands): every
command that reads or continues a result file ends in exit 0, 2 or 3 with one line, and writes nothing
when it refuses."""

from __future__ import annotations

import pytest

from .fuzz_results import build_base, run_mutant

MUTANTS = 60


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("fuzz-results"))


def test_hand_edited_result_files_end_in_one_line(base, tmp_path):
    outcomes = [run_mutant(base, seed=1, index=index, folder=tmp_path / str(index)) for index in range(MUTANTS)]
    failures = [o for o in outcomes if o.problem]
    assert not failures, "\n".join(f"#{o.index} {o.command} {o.recipe}: {o.problem}" for o in failures[:10])
    refused = [o for o in outcomes if o.exit_code == 2]
    assert len(refused) >= MUTANTS // 3  # the edits do reach the checks (most files are damaged)
