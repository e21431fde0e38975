"""Fault injection for the crash tests; does nothing unless ONNXATTACK_FAULT is set.

ONNXATTACK_FAULT="after-batch:N" sends SIGKILL once N batches are written;
"mid-batch:N" sends it while batch N + 1 is half written (some datasets already grown).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "ONNXATTACK_FAULT"


def maybe_crash(stage: str, batches_written: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{stage}:{batches_written}":
        os.kill(os.getpid(), signal.SIGKILL)
