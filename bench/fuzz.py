"""A long fuzz run of the model loader over mutated ONNX files, of `onnxattack attack` over mutated
input files (.npy / .npz / .h5), and of every command that reads a result file over hand-edited result
files (`make fuzz`: all three suites).

    python -m bench.fuzz --mutants 5000 --seed 1
    python -m bench.fuzz --suite inputs --mutants 20000 --seed 4
    python -m bench.fuzz --seed 1 --only 417 --save /tmp/case     # one case again, its bytes kept

Prints the count of each outcome (ok / exit 2 / exit 3 / failures by exception type) and every
failing case with its seed and mutant index; exits 1 if any case is neither a success nor a typed
one-line error with exit code 2 or 3.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from tests.fuzz_inputs import INPUT_BASES, base_inputs, make_input_mutant, suffix_of
from tests.fuzz_models import ALL_MODELS, BUILDERS, Outcome, base_models, make_mutant, run_fuzz

SUITES = ("models", "inputs", "results")


def _label(outcome: Outcome) -> str:
    if outcome.outcome in ("failure", "crash", "timeout"):
        return f"{outcome.outcome}: {outcome.error_type or outcome.stage}"
    return outcome.outcome


def _kind(step: str) -> str:
    return step.split(":")[0] if not step.startswith(("init:", "attr:", "nodes:", "type:", "outputs:", "inputs:")) \
        else ":".join(step.split(":")[:2])


def _message_class(message: str) -> str:
    """A message with its names, paths and numbers blanked, to count the kinds of refusal."""
    text = re.sub(r"/\S+", "PATH", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"-?\d+", "N", text)[:110]


def summarize(outcomes: list[Outcome], seed: int, elapsed: float, verbose: bool, suite: str = "models") -> int:
    counts = Counter(_label(o) for o in outcomes)
    print(f"{suite}: {len(outcomes)} mutants (seed {seed}) in {elapsed:.1f} s")
    for label, count in counts.most_common():
        print(f"  {label:<40} {count:>6}")
    stages = Counter(f"{o.outcome} in {o.stage}" for o in outcomes if o.outcome != "ok")
    print("\nwhere refused: " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items())))
    print("\nby base model:")
    for base in sorted({o.base for o in outcomes}):
        mine = Counter(o.outcome for o in outcomes if o.base == base)
        print(f"  {base:<16} " + "  ".join(f"{k} {v}" for k, v in sorted(mine.items())))
    print("\nby mutation (a mutant counts once per kind it applies):")
    kinds: dict[str, Counter] = {}
    for outcome in outcomes:
        for kind in {_kind(step) for step in outcome.recipe}:
            kinds.setdefault(kind, Counter())[outcome.outcome] += 1
    for kind, mine in sorted(kinds.items()):
        print(f"  {kind:<22} " + "  ".join(f"{k} {v}" for k, v in sorted(mine.items())))
    if verbose:
        print("\nmost common refusals:")
        refusals = Counter(f"{o.outcome} {o.error_type}: {_message_class(o.message)}" for o in outcomes
                           if o.outcome in ("exit2", "exit3"))
        for text, count in refusals.most_common(25):
            print(f"  {count:>5}  {text}")
    failures = [o for o in outcomes if not o.accepted]
    if failures:
        print(f"\n{len(failures)} FAILURE(S); reproduce one with: python -m bench.fuzz --suite {suite} --seed {seed} "
              f"--only INDEX --save DIR")
        for outcome in failures:
            print("  " + outcome.describe(seed))
            if verbose and outcome.trace:
                print("    " + outcome.trace.replace("\n", "\n    "))
    else:
        print("\nno failure: every mutant succeeded or was refused with exit code 2 or 3 and a one-line message")
    return 1 if failures else 0


def _save_mutant(suite: str, folder: Path, names: tuple[str, ...], seed: int, index: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if suite == "inputs":
        mutant = make_input_mutant(base_inputs(folder / "bases", names), seed, index)
        path = folder / f"mutant-{index}{suffix_of(mutant.base)}"
    else:
        mutant = make_mutant(base_models(folder / "bases", names), seed, index)
        path = folder / f"mutant-{index}.onnx"
    path.write_bytes(mutant.data)
    print(f"wrote {path} ({mutant.base}: {', '.join(mutant.recipe)})")


def run_results_suite(args: argparse.Namespace) -> int:
    """Hand-edited result files through report / export / validate / merge / attack --resume, in this
    process (tests/fuzz_results.py): prints the outcomes and every failing mutant."""
    import tempfile

    from tests.fuzz_results import build_base, run_mutant

    began = time.monotonic()
    start, stop = (args.only, args.only + 1) if args.only is not None else (0, args.mutants)
    with tempfile.TemporaryDirectory(prefix="onnxattack-fuzz-results-") as scratch:
        base = build_base(Path(scratch) / "base")
        outcomes = []
        for index in range(start, stop):
            outcomes.append(run_mutant(base, args.seed, index, Path(scratch) / "mutant"))
            if (index + 1) % 500 == 0:
                print(f"  ... results: {index + 1} mutants, {time.monotonic() - began:.0f} s", file=sys.stderr)
    counts = Counter("failure" if o.problem else f"exit {o.exit_code}" for o in outcomes)
    print(f"results: {len(outcomes)} mutants (seed {args.seed}) in {time.monotonic() - began:.1f} s")
    for label, count in counts.most_common():
        print(f"  {label:<40} {count:>6}")
    failures = [o for o in outcomes if o.problem]
    for outcome in failures[:50]:
        print(f"  FAIL #{outcome.index} {outcome.command} {outcome.recipe}: {outcome.problem}")
    return 1 if failures else 0


def run_suite(suite: str, args: argparse.Namespace) -> int:
    if suite == "results":
        return run_results_suite(args)
    default = INPUT_BASES if suite == "inputs" else ALL_MODELS
    names = tuple(args.models.split(",")) if args.models else default
    start, stop = (args.only, args.only + 1) if args.only is not None else (0, args.mutants)
    if args.save is not None:
        _save_mutant(suite, args.save, names, args.seed, args.only)
    began = time.monotonic()
    done = 0

    def progress(_: Outcome) -> None:
        nonlocal done
        done += 1
        if done % 500 == 0:
            print(f"  ... {suite}: {done} mutants, {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)

    module = "tests.fuzz_inputs" if suite == "inputs" else "tests.fuzz_models"
    outcomes = run_fuzz(args.seed, stop, names, start=start, timeout_s=args.timeout, memory_mb=args.memory_mb,
                        progress=progress, worker_module=module)
    return summarize(outcomes, args.seed, time.monotonic() - began, args.verbose or args.only is not None, suite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all",
                        help="models (read_model / inspect / load), inputs (`attack` on mutated input files), results "
             "(report / export / validate / merge / --resume on hand-edited result files) or all")
    parser.add_argument("--mutants", type=int, default=5000, help="how many mutants per suite (indices 0..N-1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, help="run this one mutant index")
    parser.add_argument("--save", type=Path, help="with --only: write the mutant's bytes to DIR/mutant-INDEX.*")
    parser.add_argument("--models", default="", help=f"base models, of: {', '.join(BUILDERS)} (inputs suite: base "
                                                     f"inputs, of: {', '.join(INPUT_BASES)}); default all")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one mutant may take")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space the worker may add (0: no cap)")
    parser.add_argument("--verbose", "-v", action="store_true", help="the commonest refusals; failure tracebacks")
    args = parser.parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    if args.save is not None and (args.only is None or len(suites) > 1):
        parser.error("--save needs --only and one --suite")
    codes = [run_suite(suite, args) for suite in suites]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
