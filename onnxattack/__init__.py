"""onnxattack: targeted multi-label adversarial attacks on any exported ONNX model.

    import onnxattack as oa
    model = oa.load("model.onnx")                       # checked ONNX + onnxruntime + torch graph
    oa.run_attack("model.onnx", "inputs.npy", "out.h5", oa.AttackConfig(method="ml-cw"))
"""

__version__ = "0.1.0"

from .attacks import METHODS, Attack, AttackResult, MLCarliniWagner, MLDeepFool, RankI, RankII, Victim  # noqa: E402
from .errors import BadInputError, ConversionError, FidelityError, OnnxAttackError, UnsupportedModelError  # noqa: E402
from .loader import LoadedModel, load  # noqa: E402
from .pipeline import AttackConfig, run_attack  # noqa: E402

__all__ = [
    "METHODS", "Attack", "AttackConfig", "AttackResult", "BadInputError", "ConversionError", "FidelityError",
    "LoadedModel", "MLCarliniWagner", "MLDeepFool", "OnnxAttackError", "RankI", "RankII",
    "UnsupportedModelError", "Victim", "load", "run_attack",
]
