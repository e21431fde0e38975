"""The result file: its layout (schema.py), the one writer (writer.py) and the one reader (reader.py).

Every module that reads a result file does so through `ResultFile` (or `CurveFile` for a curve);
nothing outside this package opens one with h5py.
"""

from .check import CheckFile, CheckWriter, read_pair_part, write_pair_part
from .reader import CurveFile, ResultFile, open_hdf5, plain
from .schema import (
    EPS_GROUP,
    LEARNT_DATASET,
    PASSTHROUGH_GROUP,
    ROW_DATASETS,
    ROWS,
    RUN_IDENTITY,
    TRANSFER_GROUP,
    Column,
    passthrough_dataset,
    passthrough_name,
)
from .writer import (
    ResultWriter,
    StoreWriteError,
    TransferWriter,
    check_output_path,
    copy_run,
    curve_writer,
    identity_mismatch,
    replacement_path,
    room_left,
    write_texts,
)

__all__ = [
    "EPS_GROUP", "LEARNT_DATASET", "PASSTHROUGH_GROUP", "ROWS", "ROW_DATASETS", "RUN_IDENTITY", "TRANSFER_GROUP",
    "CheckFile", "CheckWriter", "read_pair_part", "write_pair_part",
    "Column", "CurveFile", "ResultFile", "ResultWriter", "StoreWriteError", "TransferWriter", "check_output_path",
    "copy_run", "curve_writer", "identity_mismatch", "open_hdf5", "passthrough_dataset", "passthrough_name", "plain",
    "replacement_path", "room_left", "write_texts",
]
