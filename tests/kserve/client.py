"""Run by the KServe SDK's own environment (tests/kserve, kserve 0.21): its REST client (v2 protocol) and
its gRPC client against a running server, printing what they read as one JSON line.

    python client.py HTTP_URL GRPC_ADDRESS MODEL INPUT.npy
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(model: str, batch: np.ndarray) -> InferRequest:
    tensor = InferInput(name="input", shape=list(batch.shape), datatype="FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    return InferRequest(model_name=model, infer_inputs=[tensor])


async def main(http_url: str, grpc_address: str, model: str, batch: np.ndarray) -> dict:
    found: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)) as rest:
        found["live"] = await rest.is_server_live(http_url)
        found["ready"] = await rest.is_server_ready(http_url)
        found["model_ready"] = await rest.is_model_ready(http_url, model)
        response = await rest.infer(http_url, _request(model, batch), model_name=model)
        found["rest"] = response.outputs[0].as_numpy().tolist()
    async with InferenceGRPCClient(grpc_address, retries=0, timeout=30) as client:
        response = await client.infer(_request(model, batch))
        found["grpc"] = response.outputs[0].as_numpy().tolist()
    return found


if __name__ == "__main__":
    http_url, grpc_address, model, path = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(http_url, grpc_address, model, np.load(path)))))
