"""A Triton Python-backend model that runs its version directory's ``model.onnx`` with onnxruntime.

``nscompile build --triton-backend python`` copies this file, unchanged, to every suffix's
``1/model.py``, beside ``1/model.onnx`` and a ``config.pbtxt`` with ``backend: "python"``: for
Triton servers without the onnxruntime backend (the ``nvidia-pytriton`` wheel ships the Python
backend only). It imports numpy, onnxruntime and Triton's ``triton_python_backend_utils``,
never nscompile, so the server needs nothing else installed.

Instances of kind GPU run on CUDA when the server's onnxruntime has the CUDA provider;
everything else runs on the CPU.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

#: config.pbtxt parameter: onnxruntime intra-op threads per instance (default: onnxruntime's).
THREADS_PARAMETER = "nscompile_intra_op_threads"


class TritonPythonModel:
    """Triton's Python-backend interface: initialize once per instance, execute per batch of requests."""

    def initialize(self, args):
        """Create the onnxruntime session for this instance.

        Args:
            args: Triton's instance description (model_config JSON, model_repository, model_version,
                model_instance_kind, model_instance_device_id).
        """
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        options = ort.SessionOptions()
        # Spinning intra-op threads would keep the cores busy between requests, starving the
        # server's own threads (and the other instances) on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = (config.get("parameters") or {}).get(THREADS_PARAMETER, {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        """Run each request on its own (max_batch_size is 0: no batching across requests).

        Returns:
            One InferenceResponse per request, in order; a failed request gets an error
            response and leaves the others alone.
        """
        responses = []
        for request in requests:
            try:
                feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                wanted = list(request.requested_output_names()) or self.outputs
                results = self.session.run(wanted, feeds)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(r)) for name, r in zip(wanted, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # onnxruntime's own error types: answer this request with the reason
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"model.onnx failed: {exc}")))
        return responses
