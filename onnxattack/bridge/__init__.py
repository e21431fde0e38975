"""ONNX -> torch: graph rewrites (normalise), the project's converters, conversion and its checks."""

from ._deferred_vision import import_onnx2torch

import_onnx2torch()
