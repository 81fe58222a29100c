"""Dynamic batching merges concurrent requests and gives every caller its own answer."""

from concurrent import futures

import numpy as np
import pytest

from conftest import BATCHED
from tests_support import in_process_logits
from twinbench.datasets import load_dataset
from twinbench.serving import DynamicBatcher
from twinbench.tensors import infer_request, output_array


class Recorder:
    """A runtime that remembers the batch sizes it was called with (and doubles its input)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch * 2


def test_the_batcher_merges_and_splits_in_order():
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_rows=64, delay_s=0.05)
    inputs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(40)]
    with futures.ThreadPoolExecutor(40) as pool:
        outputs = list(pool.map(batcher.infer, inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert sum(recorder.calls) == sum(len(x) for x in inputs)
    assert len(recorder.calls) < len(inputs)  # requests were merged


def test_a_runtime_error_reaches_every_caller_in_the_batch():
    class Broken:
        def infer(self, batch):
            raise RuntimeError("boom")

    batcher = DynamicBatcher(Broken(), max_rows=8, delay_s=0.01)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.infer(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("model", BATCHED.split(","))
def test_concurrent_distinct_requests_each_get_their_own_answer(client, trained, home, model):
    framework = model.split("-")[1]
    job, _ = trained[framework]
    export = next(e for e in job.exports if e.model_name == model)
    images = load_dataset("mnist-5k").test.x[:96]
    # Requests of 1 or 2 images, all different, sent at once from 32 threads.
    slices = [(i, i + 1 + i % 2) for i in range(0, 90, 3)]

    def ask(bounds):
        start, stop = bounds
        request = infer_request(model, images[start:stop], version=export.version)
        return output_array(client.inference.ModelInfer(request), "logits")

    with futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, slices))
    expected = in_process_logits(home, export, images[:96])
    for (start, stop), answer in zip(slices, answers, strict=True):
        np.testing.assert_allclose(answer, expected[start:stop], atol=1e-4)
