"""The preprocessing model of a Triton ensemble (a template: see the comment below)."""

# ---- the preprocessing model of a `resnet-deploy triton --ensemble` repository ----
# Triton's python backend runs this file as NAME_preprocess/1/model.py: encoded images in (BYTES, one per
# batch item), the network's input out, by exactly the export's preprocessing (above: resnet_deploy's
# imageprep, copied verbatim; the parameters are the manifest's, in config.pbtxt). numpy and Pillow only.
# resnet_deploy.serving.triton writes it; the package never imports it.

import io  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (Triton's python backend provides it)

from ..imageprep import ImagePreprocess, UnreadableImage, UnsupportedPixels, read_rgb  # noqa: E402  (dropped: defined above)


class TritonPythonModel:
    """One response per request: the request's images preprocessed as one array, or an error that names
    the image it could not read (the other requests of the batch are answered as usual)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.preprocess = ImagePreprocess.from_manifest(json.loads(parameters["preprocess"]))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def decode(self, data, index):
        try:
            rgb = read_rgb(io.BytesIO(data))
        except UnsupportedPixels as exc:
            raise ValueError(f"image {index} {exc}") from None
        except UnreadableImage as exc:
            raise ValueError(f"image {index} is not an image Pillow can decode: {exc}") from None
        return self.preprocess(rgb)  # the resized uint8 pixels where the network normalises them itself

    def execute(self, requests):
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                batch = np.stack([self.decode(bytes(item), index) for index, item in enumerate(items)])
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            except MemoryError:  # this request's images alone: the other requests of the batch go on
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"the request's {len(items)} image(s) do not fit in the server's memory")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)]))
        return responses
