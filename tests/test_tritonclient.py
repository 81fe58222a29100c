"""A V2 client we did not write, tritonclient[grpc], against the gateway.

It runs in a process of its own: tritonclient registers its own copy of the `inference`
protobuf package, which cannot share one process with ours.
"""

import json
import subprocess
import sys

import numpy as np

from tests_support import in_process_logits
from twinbench.datasets import load_dataset

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton

address, model, version = sys.argv[1], sys.argv[2], sys.argv[4]
image = np.load(sys.argv[3])
client = triton.InferenceServerClient(url=address)
index = client.get_model_repository_index(as_json=True)
meta = client.get_model_metadata(model, as_json=True)
request = triton.InferInput("input", list(image.shape), "FP32")
request.set_data_from_numpy(image)
result = client.infer(
    model, [request], model_version=version, outputs=[triton.InferRequestedOutput("logits")]
)
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(as_json=True)["name"],
    "models": sorted(m["name"] for m in index.get("models", [])),
    "metadata": meta,
    "logits": result.as_numpy("logits").tolist(),
}))
"""


def test_tritonclient_talks_to_the_gateway(stack, trained, home, tmp_path):
    torch_job, _ = trained["torch"]
    export = next(e for e in torch_job.exports if e.format == "torchscript")
    image = load_dataset("mnist-5k").test.x[3:4]
    np.save(tmp_path / "image.npy", image)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            stack.gateway_address,
            export.model_name,
            tmp_path / "image.npy",
            export.version,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["live"] and reply["ready"] and reply["model_ready"]
    assert reply["server"] == "twinbench"
    assert set(reply["models"]) >= {
        e.model_name for job, _ in trained.values() for e in job.exports
    }
    assert reply["metadata"]["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": ["-1", "1", "28", "28"],
    }
    logits = np.array(reply["logits"])
    expected = in_process_logits(home, export, image)
    assert logits.argmax() == expected.argmax()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
