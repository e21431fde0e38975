"""Import onnx2torch without importing torchvision.

onnx2torch imports torchvision at its own import for two converters (NonMaxSuppression, RoiAlign),
and torchvision's import pulls in torch._dynamo and sympy: about 1.5 s of a 5 s start on 2 cores
(`python -X importtime -c "import cli.main"`), for functions almost no score graph calls. While
onnx2torch is imported, `torchvision` and `torchvision.ops` are stand-ins whose functions import
the real module on their first call; the stand-ins leave sys.modules right after, so any later
`import torchvision` gets the real one.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

_STAND_INS = ("torchvision", "torchvision.ops")


class _Deferred(types.ModuleType):
    """A module whose attributes are functions that import the real module when called."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        module_name = self.__name__

        def call(*args: Any, **kwargs: Any) -> Any:
            real = importlib.import_module(module_name)
            return getattr(real, name)(*args, **kwargs)

        call.__name__ = name
        return call


def import_onnx2torch() -> None:
    """Import onnx2torch (once) with torchvision deferred; a no-op when either is already imported."""
    if "onnx2torch" in sys.modules or "torchvision" in sys.modules:
        return
    stand_ins = {name: _Deferred(name) for name in _STAND_INS}
    stand_ins["torchvision"].ops = stand_ins["torchvision.ops"]  # type: ignore[attr-defined]
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("onnx2torch")
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
