"""Helpers the test modules share."""


def in_process_logits(home, export, batch):
    """The export file run in this process by its own framework, not by the services."""
    path = home / "model_repository" / export.path
    if export.format == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path)).run(None, {"input": batch})[0]
    if export.format == "torchscript":
        import torch

        return torch.jit.load(str(path)).eval()(torch.from_numpy(batch)).detach().numpy()
    import tensorflow as tf

    return (
        tf.saved_model.load(str(path)).signatures["serving_default"](input=batch)["logits"].numpy()
    )
