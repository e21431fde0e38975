"""Deployment variants of one model, each a file the user can keep, made with the libraries that deploy it:
- `int8`: onnxruntime.quantization.quantize_static, QDQ format, calibrated (min-max) on the user's inputs;
- `int8-dynamic`: onnxruntime.quantization.quantize_dynamic (int8 weights, activations quantized at run time);
- `fp16`: onnxconverter-common's float16 conversion with keep_io_types (inputs and outputs stay float32);
- `ort-basic` / `ort-all`: the graph onnxruntime runs after its basic / all optimisations, saved with
  SessionOptions.optimized_model_filepath;
- `openvino` / `openvino-f32`: no new file: the reference's own file scored by another runtime
  (runtimes.py), so its verdicts come from a second framework.
Every builder starts from the reference already read (model.ModelFile): the file is not read again. A
variant that cannot be made here is an UnsupportedModelError (exit 3) with one line.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .errors import BadInputError, UnsupportedModelError, first_line
from .model import ModelFile
from .runtimes import get_runtime

CALIBRATION_ROWS = 64
# ops of a model quantized already (onnxruntime's QDQ and integer forms): an int8 or fp16 build of it
# is not a deployment of the float model, and the quantizers and onnxconverter-common mis-handle them
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat",
                 "QLinearAdd", "QLinearMul", "QGemm"}
Builder = Callable[[onnx.ModelProto, Path, np.ndarray, str], None]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The builders change what they are given: each takes its own copy of the reference."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _int8(model: onnx.ModelProto, out: Path, calibration: np.ndarray, input_name: str) -> None:
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

    quantize_static(_copy(model), str(out), Rows(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def _int8_dynamic(model: onnx.ModelProto, out: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(_copy(model), str(out), weight_type=QuantType.QInt8)


def _fp16(model: onnx.ModelProto, out: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(_copy(model), keep_io_types=True), str(out))


def _optimised(level: str) -> Builder:
    def make(model: onnx.ModelProto, out: Path, calibration: np.ndarray, input_name: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3  # its note that an ORT_ENABLE_ALL graph may be machine-specific is in the docs
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    return make


VARIANTS: dict[str, Builder] = {
    "int8": _int8,
    "int8-dynamic": _int8_dynamic,
    "fp16": _fp16,
    "ort-basic": _optimised("ORT_ENABLE_BASIC"),
    "ort-all": _optimised("ORT_ENABLE_ALL"),
}
RUNTIME_VARIANTS = ("openvino", "openvino-f32")  # the reference's file under runtimes.RUNTIMES[name]


def parse_variants(text: str | None) -> list[str]:
    """`int8,fp16,...` -> the names, checked (exit 2 for an unknown one)."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    known = [*VARIANTS, *RUNTIME_VARIANTS]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BadInputError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise BadInputError(f"--variants names a variant twice: {text}")
    return names


def check_variants(names: list[str]) -> None:
    """Exit 3 (one line naming the package) for a variant this machine cannot make, before any work."""
    for name in names:
        if name in RUNTIME_VARIANTS:
            get_runtime(name).check()
        elif name == "fp16" and importlib.util.find_spec("onnxconverter_common") is None:
            raise UnsupportedModelError("variant fp16 needs the package onnxconverter-common "
                                        "(pip install 'onnxattack[variants]')")


def _refusal(name: str, model: onnx.ModelProto) -> str | None:
    """Why this variant of this model is not made (None: it is)."""
    quantized = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})
    if name in ("int8", "int8-dynamic", "fp16") and quantized:
        return f"the model is quantized already ({', '.join(quantized)})"
    if name == "fp16":
        ml_ops = sorted({node.op_type for node in model.graph.node if node.domain == "ai.onnx.ml"})
        if ml_ops:
            return f"its {', '.join(ml_ops)} (ai.onnx.ml) compute in float32 or float64 only"
    return None


def make_variant(name: str, source: ModelFile, out: Path, calibration: np.ndarray, input_name: str) -> Path:
    """Write variant `name` of the model read as `source` to `out` (calibrated on `calibration`, rows in
    the model's own input format)."""
    check_variants([name])
    label = Path(source.info.path).name
    refusal = _refusal(name, source.proto)
    if refusal:
        raise UnsupportedModelError(f"variant {name} of {label} is not made: {refusal}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".making")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log advice on the root logger
    try:
        VARIANTS[name](source.proto, partial, calibration, input_name)
    except Exception as exc:  # the quantizers, the converter and the optimiser raise whatever their passes raise
        partial.unlink(missing_ok=True)
        raise UnsupportedModelError(f"variant {name} of {label} cannot be made here: {first_line(exc)}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    partial.replace(out)
    return out
