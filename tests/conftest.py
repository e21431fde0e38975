"""Shared fixtures: zoo models built once (cached under model_zoo/built), small exports."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

warnings.filterwarnings("ignore")

# Every `onnxattack` process a test starts runs in its own process, even where the developer has an
# `onnxattack serve` running (tests/test_serve.py names its own server explicitly).
os.environ["ONNXATTACK_SERVER"] = "off"


@pytest.fixture(scope="session")
def zoo_model():
    """Path of a zoo model, built on first use and cached between runs."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = build(name).path
        return cache[name]

    return get


@pytest.fixture(scope="session")
def zoo_inputs():
    return test_inputs
