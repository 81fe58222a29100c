"""The Kubeflow Trainer manifests of data-parallel jobs, checked offline against the operator's
API models (the kubeflow-trainer-api package: TrainJob, ClusterTrainingRuntime and the JobSet,
Job and Pod specs inside them), and the TF_CONFIG a TensorFlow pod builds from its index."""

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import json_format
from kubeflow_trainer_api.models import (
    TrainerV1alpha1ClusterTrainingRuntime,
    TrainerV1alpha1TrainJob,
)

from twinbench.api import trainer_pb2 as tpb
from twinbench.jobs.request import resolve_spec
from twinbench.training.parallel import devices_of, tf_config_from_pod_index, workers_of

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTED = ROOT / "deploy" / "k8s" / "distributed"
MODELS = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): TrainerV1alpha1TrainJob,
    (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    ): TrainerV1alpha1ClusterTrainingRuntime,
}


def documents() -> list[dict]:
    kustomization = yaml.safe_load((DISTRIBUTED / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((DISTRIBUTED / name).read_text())]  # fmt: skip


def check(doc: dict) -> None:
    """Validates one manifest: the operator's model for its kinds (a field the model does not
    know, or a value of the wrong type, changes the round trip), Kubernetes' schema for the rest."""
    model = MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        return
    assert model.from_dict(doc).to_dict() == doc


def test_every_manifest_matches_the_operators_api_models():
    docs = documents()
    assert {d["kind"] for d in docs} == {"TrainJob", "ClusterTrainingRuntime",
                                         "PersistentVolumeClaim"}  # fmt: skip
    for doc in docs:
        check(doc)


@pytest.mark.parametrize(
    "path, change",
    [
        (("spec", "trainer"), {"replicas": 2}),  # a field TrainJob's trainer does not have
        (("spec", "trainer"), {"numNodes": "2"}),  # a string where an integer belongs
    ],
)
def test_the_model_check_catches_unknown_fields_and_wrong_types(path, change):
    doc = next(d for d in documents() if d["kind"] == "TrainJob")
    target = doc
    for key in path:
        target = target[key]
    target.update(change)
    with pytest.raises(Exception):  # noqa: B017, PT011 - a changed round trip or a type error
        check(doc)


def _trainer_env(job: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}


def test_train_jobs_name_a_runtime_ask_for_gpus_and_match_their_job_spec():
    docs = documents()
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterTrainingRuntime"}
    jobs = [d for d in docs if d["kind"] == "TrainJob"]
    assert {j["spec"]["runtimeRef"]["name"] for j in jobs} == set(runtimes)
    for job in jobs:
        trainer = job["spec"]["trainer"]
        env = _trainer_env(job)
        spec = resolve_spec(json_format.Parse(env["TWINBENCH_JOB_SPEC"], tpb.JobSpec()))
        runtime = runtimes[job["spec"]["runtimeRef"]["name"]]
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == str(devices_of(spec))
        world = trainer["numNodes"] * trainer.get("numProcPerNode", 1)
        if "torch" in runtime["spec"]["mlPolicy"]:
            assert spec.framework == "torch" and world == workers_of(spec) * devices_of(spec)
        else:  # TensorFlow: one worker process per node, its GPUs mirrored inside it
            assert spec.framework == "tf" and trainer["numNodes"] == workers_of(spec)
            assert int(env["TWINBENCH_TF_WORKERS"]) == trainer["numNodes"]
        (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
        (container,) = replicated["template"]["spec"]["template"]["spec"]["containers"]
        assert "twinbench.training.worker" in container["command"]
        assert f"twinbench.frameworks.{spec.framework}.framework:" in container["command"][-1]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/data/model_repository", "/data/jobs"} <= mounts  # exports and the record


def test_a_tensorflow_pod_builds_tf_config_from_its_index():
    env = {"TWINBENCH_TF_WORKERS": "3", "JOB_COMPLETION_INDEX": "2",
           "TWINBENCH_JOBSET_NAME": "lenet5-tf-2x1", "TWINBENCH_TF_PORT": "2222"}  # fmt: skip
    tf_config_from_pod_index(env)
    config = json.loads(env["TF_CONFIG"])
    assert config["task"] == {"type": "worker", "index": 2}
    assert config["cluster"]["worker"] == [
        f"lenet5-tf-2x1-node-0-{i}.lenet5-tf-2x1:2222" for i in range(3)
    ]
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("2", "3", "1")
    given = {"TF_CONFIG": "{}", "TWINBENCH_TF_WORKERS": "2"}
    tf_config_from_pod_index(given)  # a TF_CONFIG set by someone else is left alone
    assert given == {"TF_CONFIG": "{}", "TWINBENCH_TF_WORKERS": "2"}


def test_locust_runs_as_master_and_workers_in_compose_and_kubernetes():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    master, worker = compose["locust-master"], compose["locust-worker"]
    assert master["profiles"] == worker["profiles"] == ["loadtest-distributed"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"
    folder = ROOT / "deploy" / "k8s" / "loadtest"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [d for name in kustomization["resources"]
            for d in yaml.safe_load_all((folder / name).read_text())]  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert deployments["locust-master"]["spec"]["replicas"] == 1
    (container,) = deployments["locust-worker"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--master-host") + 1] == "locust-master"
    assert service["metadata"]["name"] == "locust-master"
    assert 5557 in {p["port"] for p in service["spec"]["ports"]}  # Locust's master port
