"""GPU check in one short call: a CUDA smoke test, then the bench figures with device cuda, all
written to ONE JSON file.

    python3 bench/gpu_check.py [--device cuda|cpu] [--out gpu_check.json] [--count 8] [--exhaustive-iter 1000]

Meant for a bare GPU machine whose python3 has torch, onnx, onnxruntime (CPU) and h5py, with the
repository checkout (model_zoo/built carried along, so no zoo model is retrained) and the pure-Python
wheels onnx2torch and click installed from files (`pip install --no-deps *.whl`). The package need not
be installed: run from the repository root; cli/ and model_zoo/ are aliased to onnxattack.cli and
onnxattack.zoo as an installation would.

Validation stays on onnxruntime's CPU provider (onnxruntime-gpu is too large to bring along);
attacks, Jacobians and timings run on cuda. `--device cpu` runs the same script on a CPU machine to
check it works; asking for cuda where torch sees none fails at once with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALIDATION_NOTE = ("onnxruntime validates on its CPU provider: onnxruntime-gpu is too large to bring along; "
                   "attacks, Jacobians and timings run on the requested torch device")


ZOO_MODULES = ("registry", "data", "models", "build", "sample_inputs")


def ensure_layout(cli_modules: tuple[str, ...] = ("main",), zoo_modules: tuple[str, ...] = ZOO_MODULES) -> None:
    """Make onnxattack.zoo and onnxattack.cli importable from a checkout that is not installed (only the
    modules named: a console-script process imports cli.launch and cli.warm, not torch)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import onnxattack

    for alias, folder, subs in (("zoo", "model_zoo", zoo_modules), ("cli", "cli", cli_modules)):
        if not subs:
            continue
        name = f"onnxattack.{alias}"
        try:
            importlib.import_module(name)
            continue
        except ImportError:
            pass
        package = importlib.import_module(folder)
        sys.modules[name] = package
        setattr(onnxattack, alias, package)
        for sub in subs:
            try:
                sys.modules[f"{name}.{sub}"] = importlib.import_module(f"{folder}.{sub}")
            except ImportError:
                continue


def smoke(device: str) -> dict:
    """ML-CW and ML-DeepFool on the zoo image classifier on `device`, judged by onnxruntime (CPU)."""
    import torch
    from onnxattack.zoo.build import build
    from onnxattack.zoo.sample_inputs import test_inputs

    from onnxattack import attack_arrays
    from onnxattack.attacks import MLCarliniWagner, MLDeepFool
    from onnxattack.loader import load

    model = load(build("digits-mosaic").path, device=device)
    x = test_inputs("digits-mosaic", 16)
    out = {"device": str(model.device), "torch_device_name": (torch.cuda.get_device_name(0) if device == "cuda"
                                                             else "cpu"), "notes": model.notes}
    for attack in (MLCarliniWagner(max_iter=200, binary_steps=5), MLDeepFool()):
        started = time.perf_counter()
        result = attack_arrays(model, x, attack, "hide-single")
        rows = result.attacked
        out[attack.name] = {"success": float(result.success[rows].mean()), "torch_agrees":
                            float(result.torch_agrees[rows].mean()), "seconds": round(time.perf_counter() - started, 2)}
    out["passed"] = all(out[name]["success"] >= 0.9 for name in ("ml-cw", "ml-deepfool"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--count", type=int, default=8, help="inputs per search case")
    parser.add_argument("--exhaustive-iter", type=int, default=1000, help="iterations per step, exhaustive search")
    parser.add_argument("--skip-figures", action="store_true", help="smoke test only")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda was asked for, but torch sees no CUDA device "
              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu", file=sys.stderr)
        return 2
    ensure_layout()
    print(VALIDATION_NOTE, flush=True)
    report: dict = {"device": args.device, "validation": VALIDATION_NOTE, "torch": torch.__version__}
    status = 0
    try:
        report["smoke"] = smoke(args.device)
        print(json.dumps(report["smoke"]), flush=True)
        status = 0 if report["smoke"]["passed"] else 1
    except Exception:  # noqa: BLE001 - the report must say what broke, and the figures still run
        report["smoke"] = {"passed": False, "error": traceback.format_exc()}
        print(report["smoke"]["error"], file=sys.stderr, flush=True)
        status = 1
    if not args.skip_figures:
        try:
            from bench.run import figures, table

            report["figures"] = figures(args.device, args.count, exhaustive_iter=args.exhaustive_iter)
            print(table(report["figures"]), flush=True)
        except Exception:  # noqa: BLE001
            report["figures_error"] = traceback.format_exc()
            print(report["figures_error"], file=sys.stderr, flush=True)
            status = 1
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
