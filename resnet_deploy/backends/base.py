"""The interface every backend's runner implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str  # e.g. "onnxruntime-cpu", "torch-cpu"
    input_name: str
    output_names: list[str]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...
