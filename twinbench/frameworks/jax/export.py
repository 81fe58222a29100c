"""JAX's exports: the native one (`stablehlo`: jax.export's serialized StableHLO with a symbolic
batch dimension, the weights passed as inputs and saved beside it) and ONNX through jax2onnx."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twinbench.models.tasks import Task

# The files of a stablehlo export's folder (the repository's model.stablehlo/).
PROGRAM_FILE = "model.jax_export"
WEIGHTS_FILE = "weights.npz"
ONNX_OPSET = 17
# Ids travel as int32 inside JAX (64-bit types are off, JAX's default); served inputs stay INT64.
_DTYPES = {"FP32": jnp.float32, "INT64": jnp.int32}


def _platforms() -> tuple[str, ...]:
    """Lowered for the CPU and CUDA both, so an export loads on either host."""
    return ("cpu", "cuda")


def export_stablehlo(
    model: nnx.Module, fn: Callable[..., jax.Array], task: Task, path: Path
) -> None:
    """Writes `path/` with the serialized program, which takes (*weights, *inputs), and the
    weights in the order it takes them: the program holds no weights as constants."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    count = len(leaves)

    def serve(*args: jax.Array) -> jax.Array:
        return fn(
            nnx.merge(graphdef, jax.tree.unflatten(treedef, list(args[:count]))), *args[count:]
        )

    (batch,) = jax.export.symbolic_shape("batch")
    inputs = [jax.ShapeDtypeStruct((batch, *i.shape), _DTYPES[i.datatype]) for i in task.inputs]
    weights = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]
    exported = jax.export.export(jax.jit(serve), platforms=_platforms())(*weights, *inputs)
    path.mkdir(parents=True)
    (path / PROGRAM_FILE).write_bytes(exported.serialize())
    arrays: dict[str, Any] = {f"w{i:05d}": np.asarray(a) for i, a in enumerate(leaves)}
    np.savez(path / WEIGHTS_FILE, **arrays)


def export_onnx(model: nnx.Module, fn: Callable[..., jax.Array], task: Task, path: Path) -> None:
    """ONNX through jax2onnx, the weights as the graph's constants (as PyTorch's exporter does),
    a symbolic batch dimension; GNMT's LSTMs go through its lax.scan support (an ONNX Loop)."""
    import jax2onnx
    import onnx

    names = [i.name for i in task.inputs]
    (batch,) = jax.export.symbolic_shape("B")  # one symbol: every input has the same rows
    specs = [jax.ShapeDtypeStruct((batch, *i.shape), _DTYPES[i.datatype]) for i in task.inputs]
    proto = jax2onnx.to_onnx(
        lambda *xs: fn(model, *xs),
        specs,
        model_name="twinbench",
        opset=ONNX_OPSET,
        input_names=names,
        output_names=["logits"],
    )
    _ids_as_int64(proto, [i.name for i in task.inputs if i.datatype == "INT64"])
    onnx.save(proto, str(path))


def _ids_as_int64(proto, names: list[str]) -> None:
    """Makes the graph's int32 id inputs INT64, as twinbench serves them, with a Cast inside."""
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    for graph_input in graph.input:
        if graph_input.name not in names:
            continue
        inner = f"{graph_input.name}_int32"
        for node in graph.node:
            node.input[:] = [inner if n == graph_input.name else n for n in node.input]
        graph_input.type.tensor_type.elem_type = TensorProto.INT64
        cast = helper.make_node("Cast", [graph_input.name], [inner], to=TensorProto.INT32)
        graph.node.insert(0, cast)
    if names:
        onnx.checker.check_model(proto)
