"""A bare training loop, the reference that `bench training --reference bare` times the harness
against: what a user would write to train the same model with no service, job record, windows,
reports or checkpoints around it.

    python -m twinbench.experiments.bare_loop --framework torch|tf --fd N --lockstep M

It is started as a lockstep arm (twinbench.experiments.lockstep_pairs.ArmProcess), so it gets
the job record on `--fd` and trains in blocks on the `--lockstep` protocol, parked between them
as a job worker is. What it shares with the job worker, so that only the harness differs: the
CPU set and thread counts (the same settings, applied the same way before the framework starts:
`TWINBENCH_TRAIN_CPUS`, `TWINBENCH_TRAIN_THREADS`, OMP_NUM_THREADS), the environment, and the
step definition: the model from the catalogue with the same initial weights, the optimizer with
the spec's constants, the batch size, the synthetic data of the job, cross-entropy on logits, one
optimizer step per batch, the losses read at each block's end (which synchronises a device). What
it leaves out is the harness: it loops over batches already in memory, in order.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import load_settings
from twinbench.errors import JobCancelled
from twinbench.jobs.hardware import training_cpus
from twinbench.training.lockstep import pacer_for
from twinbench.training.resources import pin_process, process_cpus
from twinbench.training.worker import training_threads


def torch_step(spec: tpb.JobSpec, intra: int, inter: int):
    """A plain PyTorch step: forward, cross-entropy, backward, optimizer step."""
    import torch
    from torch import nn

    from twinbench.frameworks.torch.models import build_model, load_weights
    from twinbench.frameworks.torch.session import make_optimizer
    from twinbench.models.catalogue import MODELS
    from twinbench.models.initial_weights import shared_initial_weights

    torch.set_num_threads(intra)
    torch.set_num_interop_threads(inter)
    declared = MODELS[spec.model]
    torch.manual_seed(spec.seed)
    model = build_model(declared)
    if spec.init == "shared":
        load_weights(model, shared_initial_weights(declared, spec.seed))
    optimizer = make_optimizer(model.parameters(), spec.optimizer)
    model.train()

    def step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, lambda x: torch.from_numpy(x), lambda losses: [float(v) for v in losses]


def tf_step(spec: tpb.JobSpec, intra: int, inter: int):
    """A plain Keras step: a tf.function with a GradientTape, as a user of TensorFlow writes it."""
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    from twinbench.frameworks.tf.models import build_model, set_weights
    from twinbench.frameworks.tf.session import make_optimizer
    from twinbench.models.catalogue import MODELS
    from twinbench.models.initial_weights import shared_initial_weights

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    declared = MODELS[spec.model]
    tf.random.set_seed(spec.seed)
    model = build_model(declared)
    if spec.init == "shared":
        set_weights(model, declared, shared_initial_weights(declared, spec.seed))
    optimizer = make_optimizer(spec.optimizer)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=bool(spec.compiled))
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def to_tensor(x):
        if x.ndim == 4:  # Keras convolutions take NHWC
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return tf.constant(x)

    return step, to_tensor, lambda losses: [float(v.numpy()) for v in losses]


STEPS: dict[str, Callable] = {"torch": torch_step, "tf": tf_step}


def main() -> None:
    parser = argparse.ArgumentParser(description="a bare training loop, a lockstep arm")
    parser.add_argument("--framework", choices=sorted(STEPS), required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lockstep", type=int, required=True)
    args = parser.parse_args()
    conn = Connection(args.fd)
    job = tpb.Job.FromString(conn.recv())
    pacer = pacer_for(args.lockstep)
    settings = load_settings()
    cpus = training_cpus(settings)
    pin_process(cpus)  # as the job worker: every thread, before the framework starts any
    intra, inter = training_threads(settings, cpus)
    os.environ["OMP_NUM_THREADS"] = str(intra)
    spec = job.spec
    step, to_tensor, read = STEPS[args.framework](spec, intra, inter)
    from twinbench.data.datasets import load_dataset
    from twinbench.models.catalogue import MODELS

    data = load_dataset(spec.dataset or "synthetic", MODELS[spec.model]).train
    batch = spec.batch_size
    batches = [(to_tensor(data.x[i : i + batch]), to_tensor(data.y[i : i + batch]))
               for i in range(0, len(data) - batch + 1, batch)]  # fmt: skip
    job.threads.intra_op, job.threads.inter_op = intra, inter
    job.cpu_set[:] = process_cpus()
    job.framework_version = job.framework_version or args.framework
    conn.send(("job", job.SerializeToString()))
    try:
        pacer.ready()
        pending, losses, start, k = 0, [], time.perf_counter(), 0
        while True:
            x, y = batches[k % len(batches)]
            losses.append(step(x, y))
            k += 1
            pending += 1
            if pacer.edge_after(pending):
                read(losses)  # the losses read at the segment's end, as the training loop does
                pacer.add(time.perf_counter() - start, batch * pending, pending)
                pending, losses, start = 0, [], time.perf_counter()
    except JobCancelled:
        conn.send(("end", "cancelled", ""))


if __name__ == "__main__":
    main()
