"""The click command line: a thin layer over the onnxattack library."""

import os

# The environment this process started with, recorded before any module of the command line (and so any
# library: scikit-learn sets KMP_* variables) is imported: the import-time settings that a caller and
# `onnxattack serve` compare (cli/warm.py).
STARTING_ENVIRONMENT = dict(os.environ)
