"""A V2 client we did not write, tritonclient[grpc], against the gateway.

It runs in a process of its own: tritonclient registers its own copy of the `inference`
protobuf package, which cannot share one process with ours.
"""

import json
import subprocess
import sys

import numpy as np

from tests_support import in_process_logits
from twinbench.data.datasets import load_dataset
from twinbench.serving.repository import ModelRepository

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton

address, model, version = sys.argv[1], sys.argv[2], sys.argv[4]
image = np.load(sys.argv[3])
client = triton.InferenceServerClient(url=address)
index = client.get_model_repository_index(as_json=True)
meta = client.get_model_metadata(model, as_json=True)
config = client.get_model_config(model, as_json=True)["config"]
before = client.get_inference_statistics(model, version, as_json=True)
request = triton.InferInput("input", list(image.shape), "FP32")
request.set_data_from_numpy(image)
result = client.infer(
    model, [request], model_version=version, outputs=[triton.InferRequestedOutput("logits")]
)
after = client.get_inference_statistics(model, version, as_json=True)
everything = client.get_inference_statistics(as_json=True)
print(json.dumps({
    "config": config,
    "stats_before": before["model_stats"],
    "stats_after": after["model_stats"],
    "all_stats": sorted({m["name"] for m in everything["model_stats"]}),
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
    # ModelConfig: the config.pbtxt Triton would read, as Triton's message.
    info = ModelRepository(home / "model_repository").info(export.model_name, int(export.version))
    config = reply["config"]
    assert (config["name"], config["platform"]) == (export.model_name, info.platform)
    assert config["max_batch_size"] == info.max_batch_size
    assert (config["input"][0]["name"], config["input"][0]["data_type"]) == ("input", "TYPE_FP32")
    assert tuple(int(d) for d in config["input"][0]["dims"]) == info.input_shape
    assert [int(d) for d in config["output"][0]["dims"]] == [info.num_classes]
    # ModelStatistics: the one inference above is counted, with its compute time.
    (before,), (after,) = reply["stats_before"], reply["stats_after"]
    assert (after["name"], after["version"]) == (export.model_name, export.version)

    def count(stats, key):
        return int(stats["inference_stats"][key].get("count", 0))

    assert count(after, "success") == count(before, "success") + 1
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 1
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > int(
        before["inference_stats"]["compute_infer"].get("ns", 0)
    )
    assert export.model_name in reply["all_stats"]
    logits = np.array(reply["logits"])
    expected = in_process_logits(home, export, image)
    assert logits.argmax() == expected.argmax()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
