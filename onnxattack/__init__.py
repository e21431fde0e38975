"""onnxattack: targeted multi-label adversarial attacks on any exported ONNX model.

    import onnxattack as oa
    model = oa.load("model.onnx", box=(0, 1))              # checked ONNX + onnxruntime + torch graph
    result = oa.attack_arrays(model, x, oa.MLDeepFool())   # judged by onnxruntime
    oa.run_attack("model.onnx", "inputs.npy", "out.h5", oa.AttackConfig(method="ml-cw"))
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxattack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .attacks import (  # noqa: E402
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
from .batch import BatchResult, attack_arrays  # noqa: E402
from .config import AttackConfig  # noqa: E402
from .curve import run_curve  # noqa: E402
from .dataset import open_dataset  # noqa: E402
from .errors import (  # noqa: E402
    BadInputError,
    ConfigError,
    ConversionError,
    FidelityError,
    OnnxAttackError,
    UnsupportedModelError,
)
from .loader import LoadedModel, load  # noqa: E402
from .pipeline import run_attack  # noqa: E402
from .results import ResultFile  # noqa: E402

__all__ = [
    "METHODS", "Attack", "AttackConfig", "AttackResult", "BadInputError", "BatchResult", "ConfigError",
    "ConversionError", "FidelityError", "LoadedModel", "MLALP", "MLCarliniWagner", "MLDeepFool", "MLHotFlip", "MLPGD",
    "OnnxAttackError", "RankI", "RankII", "ResultFile", "TkMLTargeted", "TkMLUntargeted", "UniversalPerturbation",
    "UnsupportedModelError", "Victim", "attack_arrays", "load", "open_dataset", "run_attack", "run_curve",
]
