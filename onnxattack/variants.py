"""Deployment variants of one model, each a file the user can keep, made with the libraries that deploy it:
- `int8`: onnxruntime.quantization.quantize_static, QDQ format, calibrated (min-max) on the user's inputs;
- `int8-dynamic`: onnxruntime.quantization.quantize_dynamic (int8 weights, activations quantized at run time);
- `fp16`: onnxconverter-common's float16 conversion with keep_io_types (inputs and outputs stay float32);
- `ort-basic` / `ort-all`: the graph onnxruntime runs after its basic / all optimisations, saved with
  SessionOptions.optimized_model_filepath.
A variant that cannot be made here is an UnsupportedModelError (exit 3) with one line.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import BadInputError, UnsupportedModelError, first_line

CALIBRATION_ROWS = 64


def _int8(source: Path, out: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Rows(CalibrationDataReader):
        """The user's first rows, one at a time (a model with a fixed batch of 1 takes them too)."""

        def __init__(self) -> None:
            self.rows: Iterator[np.ndarray] = iter(calibration[:CALIBRATION_ROWS])

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self.rows, None)
            return None if row is None else {input_name: row[None]}

    quantize_static(str(source), str(out), Rows(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def _int8_dynamic(source: Path, out: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)


def _fp16(source: Path, out: Path, calibration: np.ndarray, input_name: str) -> None:
    if importlib.util.find_spec("onnxconverter_common") is None:
        raise UnsupportedModelError("variant fp16 needs the package onnxconverter-common "
                                    "(pip install onnxconverter-common)")
    import onnx
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(out))


def _optimised(level: str) -> Callable[[Path, Path, np.ndarray, str], None]:
    def make(source: Path, out: Path, calibration: np.ndarray, input_name: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3  # its note that an ORT_ENABLE_ALL graph may be machine-specific is in the docs
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])

    return make


VARIANTS: dict[str, Callable[[Path, Path, np.ndarray, str], None]] = {
    "int8": _int8,
    "int8-dynamic": _int8_dynamic,
    "fp16": _fp16,
    "ort-basic": _optimised("ORT_ENABLE_BASIC"),
    "ort-all": _optimised("ORT_ENABLE_ALL"),
}


def parse_variants(text: str | None) -> list[str]:
    """`int8,fp16,...` -> the names, checked (exit 2 for an unknown one)."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise BadInputError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if len(set(names)) != len(names):
        raise BadInputError(f"--variants names a variant twice: {text}")
    return names


def make_variant(name: str, source: Path, out: Path, calibration: np.ndarray, input_name: str) -> Path:
    """Write variant `name` of the model at `source` to `out` (calibrated on `calibration`, rows in the
    model's own input format)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".making")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log advice on the root logger
    try:
        VARIANTS[name](source, partial, calibration, input_name)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the quantizers and the optimiser raise whatever their passes raise
        partial.unlink(missing_ok=True)
        raise UnsupportedModelError(f"variant {name} of {source.name} cannot be made here: {first_line(exc)}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    partial.replace(out)
    return out
