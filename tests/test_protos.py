"""The committed gRPC stubs are exactly what the one regeneration command makes."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ["twinbench/api/trainer.proto", "twinbench/api/inference.proto"]


def test_committed_stubs_match_regeneration(tmp_path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(f"protos/{p}" for p in PROTOS),
        ],
        cwd=tmp_path,
        check=True,
    )
    generated = sorted(p.relative_to(out) for p in out.rglob("*_pb2*"))
    assert len(generated) == 6
    stale = [str(p) for p in generated if not filecmp.cmp(out / p, ROOT / p, shallow=False)]
    assert not stale, f"stubs out of date, run `make protos`: {stale}"


def test_inference_api_keeps_the_public_field_numbers():
    from twinbench.api import inference_pb2 as ipb

    infer = ipb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert ipb.DESCRIPTOR.package == "inference"
    assert infer["raw_input_contents"].number == 7 and infer["inputs"].number == 5
    assert ipb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
    assert ipb.InferTensorContents.DESCRIPTOR.fields_by_name["fp32_contents"].number == 6
    index = ipb.RepositoryIndexResponse.ModelIndex.DESCRIPTOR.fields_by_name
    assert [index[n].number for n in ("name", "version", "state", "reason")] == [1, 2, 3, 4]
    methods = [m.name for m in ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert set(methods) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    }


def test_triton_extensions_keep_tritons_field_numbers():
    """ModelConfig and ModelStatistics as Triton's grpc_service.proto and model_config.proto
    number them: perf_analyzer and tritonclient read them."""
    from twinbench.api import inference_pb2 as ipb

    def numbers(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(ipb.ModelStatistics) == {
        "name": 1, "version": 2, "last_inference": 3, "inference_count": 4,
        "execution_count": 5, "inference_stats": 6, "batch_stats": 7,
    }  # fmt: skip
    assert numbers(ipb.InferStatistics) == {
        "success": 1, "fail": 2, "queue": 3, "compute_input": 4, "compute_infer": 5,
        "compute_output": 6, "cache_hit": 7, "cache_miss": 8,
    }  # fmt: skip
    assert numbers(ipb.StatisticDuration) == {"count": 1, "ns": 2}
    assert numbers(ipb.InferBatchStatistics) == {
        "batch_size": 1, "compute_input": 2, "compute_infer": 3, "compute_output": 4,
    }  # fmt: skip
    config = numbers(ipb.ModelConfig)
    assert {k: config[k] for k in ("name", "platform", "version_policy", "max_batch_size")} == {
        "name": 1, "platform": 2, "version_policy": 3, "max_batch_size": 4,
    }  # fmt: skip
    assert (config["input"], config["output"], config["backend"]) == (5, 6, 17)
    assert numbers(ipb.ModelInput) == {"name": 1, "data_type": 2, "format": 3, "dims": 4}
    assert ipb.DataType.Value("TYPE_FP32") == 11
