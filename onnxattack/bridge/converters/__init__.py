"""The project's own onnx2torch converters for op versions onnx2torch 1.5.15 lacks.

Importing this package registers them in onnx2torch's own registry (once per process).
One module per op family:
- reduce.py: Reduce*-18/20 (axes moved from an attribute to an input)
- reshape.py: Reshape-19/21 (allowzero honoured)
- activations.py: Gelu-20 (new op)
- structure.py: Split-18 (num_outputs), Pad-18+ (axes input), AveragePool-19 (dilations)
- aliases.py: version bumps that only widened the accepted types; they reuse the
  previous version's converter, with a guard where an attribute changed meaning.
"""

from . import activations, aliases, reduce, reshape, structure  # noqa: F401
