"""The runtimes that score a model file: onnxruntime (every verdict, unless told otherwise) and OpenVINO
(a second framework reading the same ONNX bytes; the `openvino` extra).

A runtime turns the model's serialized bytes into a `Session` (`run(output_names, feeds)`,
`get_providers()`); runtime.OrtScorer drives any session, so batching, fixed batch sizes and frame
folding are the same whichever runtime gives the scores. A model argument names its runtime with
`FILE:runtime=NAME` (adapt.parse_model_arg) and crosscheck's `--variants openvino` is the reference
file under OpenVINO; the loader picks the runtime from LoadSettings.runtime.

- `onnxruntime`: runtime.make_session (CPU, CUDA when asked for and present).
- `openvino`: openvino.Core().read_model on the bytes, compile_model on the CPU with the plugin's
  default settings, as a deployment gets them (its inference precision may be bf16 or f16 on CPUs
  that have it: `describe` names the precision used).
- `openvino-f32`: the same with the inference precision hint f32 (exact float32 arithmetic).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from .errors import BadInputError, UnsupportedModelError, first_line
from .runtime import Session, make_session

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "Runtime", "Session", "get_runtime"]

DEFAULT_RUNTIME = "onnxruntime"


class Runtime(Protocol):
    name: str

    def check(self) -> None:
        """Raise UnsupportedModelError (one line, naming the extra to install) when it cannot run here."""

    def session(self, model_bytes: bytes, device: str, quiet: bool = False, exact_qdq: bool = False,
                one_thread: bool = False) -> Session: ...

    def describe(self) -> str:
        """Name and version (a session's get_providers() says where and at what precision it runs)."""


class OnnxRuntime:
    name = "onnxruntime"

    def check(self) -> None:
        return None

    def session(self, model_bytes: bytes, device: str, quiet: bool = False, exact_qdq: bool = False,
                one_thread: bool = False) -> Session:
        return make_session(model_bytes, device, quiet=quiet, exact_qdq=exact_qdq, one_thread=one_thread)

    def describe(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"


def _reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what failed: its texts open with source locations
    ("Exception from src/...", "Check 'false' failed at ...") and list the culprits as "-- ..." lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    listed = [line.removeprefix("-- ") for line in lines if line.startswith("-- ")]
    told = [line for line in lines if not line.startswith(("Exception from ", "Check '", "To facilitate"))]
    return "; ".join(listed) or (told[0] if told else first_line(exc))


class OpenVinoSession:
    """A model compiled by OpenVINO for the CPU, called like an onnxruntime session."""

    def __init__(self, compiled: object, precision: str) -> None:
        self.compiled = compiled
        self.precision = precision

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self.compiled
        try:
            results = compiled(feeds)  # type: ignore[operator]
            return [np.asarray(results[compiled.output(name)]) for name in output_names]  # type: ignore[attr-defined]
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line texts
            raise UnsupportedModelError(f"OpenVINO failed to run the model: {_reason(exc)}") from None

    def get_providers(self) -> list[str]:
        return [f"CPU, inference precision {self.precision}"]


class OpenVino:
    """OpenVINO's CPU plugin; `precision`: its inference precision hint (None: the plugin's default)."""

    def __init__(self, name: str, precision: str | None = None) -> None:
        self.name = name
        self.precision = precision

    def check(self) -> None:
        if importlib.util.find_spec("openvino") is None:
            raise UnsupportedModelError(f"runtime {self.name} needs the package openvino "
                                        f"(pip install 'onnxattack[openvino]')")

    def session(self, model_bytes: bytes, device: str, quiet: bool = False, exact_qdq: bool = False,
                one_thread: bool = False) -> Session:
        self.check()
        import openvino

        core = openvino.Core()
        config = {} if self.precision is None else {"INFERENCE_PRECISION_HINT": self.precision}
        try:
            model = core.read_model(model_bytes, openvino.Tensor(np.empty(0, np.uint8)))
            compiled = core.compile_model(model, "CPU", config)
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            used = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        except Exception as exc:  # read or compile: RuntimeError naming the operator, over several lines
            raise UnsupportedModelError(f"OpenVINO cannot load the model: {_reason(exc)}") from None
        return OpenVinoSession(compiled, used)

    def describe(self) -> str:
        import openvino

        return f"openvino {openvino.__version__.split('-')[0]}"


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": OnnxRuntime(),
    "openvino": OpenVino("openvino"),
    "openvino-f32": OpenVino("openvino-f32", "f32"),
}


def get_runtime(name: str) -> Runtime:
    """The runtime of that name (exit 2 for an unknown one)."""
    if name not in RUNTIMES:
        raise BadInputError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[name]
