"""PyTorch eager: the reference every artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """Runs an ``nn.Module`` in eval mode without autograd; outputs named like the ONNX graph's."""

    def __init__(self, model: nn.Module, output_names: list[str], *, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self.input_name = "input"
        self.output_names = list(output_names)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self.model(torch.from_numpy(batch).to(self.device))
        tensors = result if isinstance(result, (list, tuple)) else [result]
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, tensors)}
