"""Soak: many clients infer against every served model while each trainer trains; none is lost."""

import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import numpy as np

from conftest import wait_for
from tally import TALLY
from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import load_dataset
from twinbench.serving.tensors import infer_request, output_array

CLIENTS = 16
SECONDS = 8.0


def test_concurrent_inference_while_both_trainers_train(client, trained):
    index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest(ready=True))
    models = sorted(
        name
        for name in {m.name for m in index.models if m.state == "READY"}
        if _takes_a_digit(client, name)  # other tests of the session serve other models too
    )
    assert len(models) >= 4
    images = load_dataset("mnist-5k").test.x[:32]
    spec = tpb.JobSpec(framework="both", model="lenet5", epochs=3, train_samples=1024)
    jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs

    counts: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def one_client(k: int) -> None:
        i = k
        while not stop.is_set():
            model, row = models[i % len(models)], i % len(images)
            i += 1
            try:
                reply = client.inference.ModelInfer(
                    infer_request(model, images[row : row + 1]), timeout=30
                )
                ok = output_array(reply, "logits").shape == (1, 10)
            except grpc.RpcError:
                ok = False
            with lock:
                counts["sent"] += 1
                counts["succeeded" if ok else "failed"] += 1

    with futures.ThreadPoolExecutor(CLIENTS) as pool:
        for k in range(CLIENTS):
            pool.submit(one_client, k)
        time.sleep(SECONDS)
        stop.set()
    finished = [wait_for(client, job.id)[0] for job in jobs]

    print(f"\nsoak: {dict(counts)}, jobs {[tpb.JobState.Name(j.state) for j in finished]}")
    TALLY["requests under load"] += counts["sent"]
    TALLY["requests lost under load"] += counts["failed"]
    assert counts["sent"] > 100 and counts["failed"] == 0
    assert counts["succeeded"] == counts["sent"]
    assert all(j.state == tpb.SUCCEEDED for j in finished)
    assert np.isfinite([j.test_accuracy for j in finished]).all()


def _takes_a_digit(client, name: str) -> bool:
    """Whether the served model takes one 1x28x28 FP32 image and gives 10 logits."""
    meta = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=name))
    inputs = [(t.datatype, list(t.shape[1:])) for t in meta.inputs]
    outputs = [list(t.shape[1:]) for t in meta.outputs]
    return inputs == [("FP32", [1, 28, 28])] and outputs == [[10]]
