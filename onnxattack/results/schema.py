"""The result file's layout, written down once: every row dataset, its shape and dtype, and the
names of the groups and attributes that the writer and the reader agree on.

The batch rows (`BatchResult.rows`), the writer's dataset list and its dataset specs are all
derived from ROWS; a new per-row output is one line here (and a field where it is computed).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np

# Layout version: raised when a reader of the old layout would misread the new one (not for additions).
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Column:
    """One per-row dataset: row i belongs to input i."""

    name: str
    shape: str  # "sample" (the attacked input's shape), "labels" ([L]) or "row" (a scalar per row)
    dtype: str | None  # numpy dtype name; None: the model input's own dtype
    meaning: str


ROWS: tuple[Column, ...] = (
    Column("x", "sample", None, "the clean input"),
    Column("x_adv", "sample", None, "the adversarial input (= x where not attacked)"),
    Column("scores", "labels", "float32", "onnxruntime scores of x"),
    Column("scores_adv", "labels", "float32", "onnxruntime scores of x_adv"),
    Column("y_pred", "labels", "int8", "prediction of x"),
    Column("y_target", "labels", "int8", "the target label vector (or target set)"),
    Column("y_adv", "labels", "int8", "onnxruntime prediction of x_adv"),
    Column("success", "row", "bool", "the target is reached, judged by onnxruntime on x_adv"),
    Column("attacked", "row", "bool", "false where the input was skipped"),
    Column("torch_agrees", "row", "bool", "the gradient source's verdict on x_adv equals onnxruntime's"),
    Column("l2", "row", "float32", "L2 norm of x_adv - x in input units"),
    Column("linf", "row", "float32", "L-inf norm of x_adv - x in input units"),
    Column("iterations", "row", "int32", "iterations the attack used"),
    Column("queries", "row", "int64", "onnxruntime queries of estimated gradients"),
    Column("model_calls", "row", "int64", "forward + backward passes the row took part in"),
    Column("stall_reason", "row", "int8", "why estimated gradients stopped the row early (0: they did not; "
                                          "the codes are the root attribute stall_reasons)"),
)
ROW_DATASETS: tuple[str, ...] = tuple(column.name for column in ROWS)
# What a file must hold to be read as a result file at all: the contract's first columns (iterations,
# queries, model_calls and stall_reason came later; files without them still read).
REQUIRED = ("x", "x_adv", "scores", "scores_adv", "y_pred", "y_target", "y_adv", "success", "attacked",
            "torch_agrees", "l2", "linf")

PASSTHROUGH_GROUP = "inputs"  # a multi-input model's other inputs, one dataset per input name
LEARNT_DATASET = "universal_delta"  # what a set attack learnt from the whole input set, written before any row
TRANSFER_GROUP = "transfer"  # transfer/<model>: another model's verdict on x_adv (validate)
TRANSFER_COLUMNS: tuple[Column, ...] = (
    Column("scores_adv", "labels", "float32", "the other model's scores of x_adv"),
    Column("y_adv", "labels", "int8", "the other model's prediction of x_adv"),
    Column("success", "row", "bool", "the other model's prediction of x_adv reaches the target"),
)
EPS_GROUP = "eps"  # a curve file: eps/<value>, one run's layout each
CHECK_KIND = "crosscheck"  # a crosscheck file's root attribute kind (results/check.py has its layout)
MODELS_GROUP = "models"  # a crosscheck file: models/<name>, one model or variant each
AGREEMENT_GROUP = "agreement"  # a crosscheck file: the clean agreement matrices
DISAGREE_GROUP = "disagree"  # a crosscheck file: disagree/<A>:<B>, one disagreement search per pair
# a disagreement search's per-row datasets (results/check.py)
PAIR_ROWS = ("x_adv", "l2", "linf", "success", "clean_disagree", "torch_success", "y_a", "y_b", "iterations",
             "model_calls")

# Attributes that must match for --resume to continue a file.
RUN_IDENTITY = ("model_sha256", "method", "target", "params", "seed", "scores_kind", "threshold",
                "n_inputs", "row_start", "row_stop")


def dataset_specs(sample_shape: tuple[int, ...], input_dtype: np.dtype, num_labels: int,
                  columns: tuple[Column, ...] = ROWS) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape of one row, dtype) for every column."""
    shapes = {"sample": tuple(sample_shape), "labels": (num_labels,), "row": ()}
    return {column.name: (shapes[column.shape], np.dtype(column.dtype or input_dtype)) for column in columns}


def passthrough_dataset(name: str) -> str:
    """inputs/<name>; a '/' in an input name (tf2onnx's scopes) is written %2F, so it stays one dataset, and
    the names '.' and '..' (which HDF5 reads as the group itself and its parent) are written %2E, %2E%2E."""
    key = name.replace("%", "%25").replace("/", "%2F")
    return f"{PASSTHROUGH_GROUP}/{'%2E' * len(key) if key in ('.', '..') else key}"


def passthrough_name(key: str) -> str:
    """The input name stored under inputs/<key>."""
    return unquote(key)
