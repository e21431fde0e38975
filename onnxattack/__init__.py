"""onnxattack: targeted multi-label adversarial attacks on any exported ONNX model.

    import onnxattack as oa
    model = oa.load("model.onnx", box=(0, 1))              # checked ONNX + onnxruntime + torch graph
    result = oa.attack_arrays(model, x, oa.MLDeepFool())   # judged by onnxruntime
    oa.run_attack("model.onnx", "inputs.npy", "out.h5", oa.AttackConfig(method="ml-cw"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names and the module each lives in. They are imported on first use (PEP 562), so that
# `import onnxattack.cli.launch` (the console script, which hands a command to a warm `onnxattack serve`
# when one runs) costs milliseconds instead of torch's import.
_EXPORTS = {
    "onnxattack.attacks": ("METHODS", "MLALP", "MLPGD", "Attack", "AttackResult", "MLCarliniWagner", "MLDeepFool",
                           "MLHotFlip", "RankI", "RankII", "TkMLTargeted", "TkMLUntargeted", "UniversalPerturbation",
                           "Victim"),
    "onnxattack.batch": ("BatchResult", "attack_arrays"),
    "onnxattack.config": ("AttackConfig",),
    "onnxattack.curve": ("run_curve",),
    "onnxattack.dataset": ("open_dataset",),
    "onnxattack.errors": ("BadInputError", "ConfigError", "ConversionError", "FidelityError", "OnnxAttackError",
                          "UnsupportedModelError"),
    "onnxattack.loader": ("LoadedModel", "load"),
    "onnxattack.pipeline": ("run_attack",),
    "onnxattack.results": ("ResultFile",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [  # the same names as _HOME's (tests/test_packaging.py), written out for readers and linters
    "METHODS", "Attack", "AttackConfig", "AttackResult", "BadInputError", "BatchResult", "ConfigError",
    "ConversionError", "FidelityError", "LoadedModel", "MLALP", "MLCarliniWagner", "MLDeepFool", "MLHotFlip", "MLPGD",
    "OnnxAttackError", "RankI", "RankII", "ResultFile", "TkMLTargeted", "TkMLUntargeted", "UniversalPerturbation",
    "UnsupportedModelError", "Victim", "attack_arrays", "load", "open_dataset", "run_attack", "run_curve",
]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxattack")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _installed_version()
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:  # a submodule reached as an attribute (onnxattack.bridge), as an eager package allowed
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


if TYPE_CHECKING:
    from .attacks import (
        METHODS,
        MLALP,
        MLPGD,
        Attack,
        AttackResult,
        MLCarliniWagner,
        MLDeepFool,
        MLHotFlip,
        RankI,
        RankII,
        TkMLTargeted,
        TkMLUntargeted,
        UniversalPerturbation,
        Victim,
    )
    from .batch import BatchResult, attack_arrays
    from .config import AttackConfig
    from .curve import run_curve
    from .dataset import open_dataset
    from .errors import (
        BadInputError,
        ConfigError,
        ConversionError,
        FidelityError,
        OnnxAttackError,
        UnsupportedModelError,
    )
    from .loader import LoadedModel, load
    from .pipeline import run_attack
    from .results import ResultFile
