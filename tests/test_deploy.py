"""The container deployment, checked without an engine: linters, schemas, and each image's command run locally."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests_support import until
from twinbench.config import DEFAULT_LINK_PORTS, DEFAULT_METRICS_PORTS, DEFAULT_PORTS, FRAMEWORKS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted([*ROOT.glob("services/*/Dockerfile"), ROOT / "loadtests" / "Dockerfile"])
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
COMPOSE_CPU = ROOT / "deploy" / "docker-compose.cpu.yml"
COMPOSE_SCHEMA = Path(sys.prefix) / "share" / "compose_spec.json"  # fetched by `make venv`
K8S = ROOT / "deploy" / "k8s"
TRAINERS = ("torch_trainer", "tf_trainer", "jax_trainer")


class ComposeLoader(yaml.SafeLoader):
    """Reads Compose's merge tags (`!reset`) as the empty value they leave behind."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def test_every_dockerfile_passes_hadolint():
    assert len(DOCKERFILES) == 5  # the gateway, three trainers, Locust
    hadolint = Path(sys.prefix) / "bin" / "hadolint"
    done = subprocess.run([hadolint, *DOCKERFILES], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(path):
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    document = load_compose(path)
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(document)]
    assert not errors, errors


def test_compose_reserves_gpus_and_keeps_trainers_internal():
    services = load_compose(COMPOSE)["services"]
    networks = load_compose(COMPOSE)["networks"]
    assert networks["internal"]["internal"] is True
    published = {name for name, s in services.items() if s.get("ports") and not s.get("profiles")}
    assert published == {"gateway"}
    for name in TRAINERS:
        trainer = services[name]
        assert trainer["networks"] == ["internal"]
        (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert services["gateway"]["depends_on"][name]["condition"] == "service_healthy"
        assert any(v.endswith(":/data/model_repository") for v in trainer["volumes"])
        assert trainer["restart"] == "unless-stopped" and "healthcheck" in trainer
    assert services["tensorboard"]["profiles"] == ["tensorboard"]
    assert services["locust"]["profiles"] == ["loadtest"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    cpu = load_compose(COMPOSE_CPU)["services"]
    assert all(cpu[name]["deploy"] is None for name in TRAINERS)


def test_the_gateway_finds_every_framework_s_trainer_and_its_link():
    """Compose's and Kubernetes' gateway: each framework's trainer at its service name and port."""
    compose_env = load_compose(COMPOSE)["services"]["gateway"]["environment"]
    docs = yaml.safe_load_all((K8S / "gateway.yaml").read_text())
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    k8s_env = {e["name"]: e["value"] for e in container["env"]}
    for env in (compose_env, k8s_env):  # the gateway routes to, and waits for, all three
        assert env["TWINBENCH_FRAMEWORKS"].split(",") == list(FRAMEWORKS)
    for framework in FRAMEWORKS:
        service, variable = f"{framework}_trainer", f"TWINBENCH_{framework.upper()}_TRAINER"
        for env, host in ((compose_env, service), (k8s_env, service.replace("_", "-"))):
            assert env[variable] == f"{host}:{DEFAULT_PORTS[service]}"
            assert env[f"{variable}_LINK"] == f"{host}:{DEFAULT_LINK_PORTS[service]}"
        trainer = load_compose(COMPOSE)["services"][service]["environment"]
        assert trainer["TWINBENCH_LISTEN"] == f"0.0.0.0:{DEFAULT_PORTS[service]}"
        assert trainer["TWINBENCH_LINK_LISTEN"] == f"0.0.0.0:{DEFAULT_LINK_PORTS[service]}"


def test_build_images_builds_every_dockerfile_with_its_requirements():
    script = (ROOT / "deploy" / "build-images.sh").read_text()
    for dockerfile in DOCKERFILES:
        assert str(dockerfile.relative_to(ROOT)) in script, dockerfile
    for service in TRAINERS:
        assert f"--build-arg REQUIREMENTS=requirements/{service}$suffix.txt" in script
        for suffix in ("", "-cuda"):
            assert (ROOT / "requirements" / f"{service}{suffix}.txt").is_file()


def test_kubernetes_manifests_validate_and_ask_for_gpus():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    kinds = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            kinds.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    assert set(deployments) == {"gateway", "torch-trainer", "tf-trainer", "jax-trainer"}
    assert deployments["gateway"]["spec"]["replicas"] > 1
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "grpc" in container["readinessProbe"] and "grpc" in container["livenessProbe"]
        if name != "gateway":
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {s["metadata"]["name"] for s in kinds["Service"]} == set(deployments)
    assert "model-repository" in {c["metadata"]["name"] for c in kinds["PersistentVolumeClaim"]}


def test_monitoring_scrapes_every_service_on_its_metrics_port():
    services = load_compose(COMPOSE)["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    # Compose's service names, and each service's metrics port as the code has it.
    assert targets == {f"{name}:{DEFAULT_METRICS_PORTS[name]}" for name in DEFAULT_METRICS_PORTS}
    assert set(DEFAULT_METRICS_PORTS) <= set(services)
    # Prometheus reaches the internal network the trainers sit on.
    assert "internal" in services["prometheus"]["networks"]
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / "deploy" / source).exists(), source
    dashboard = json.loads(
        (ROOT / "deploy/monitoring/grafana/dashboards/twinbench.json").read_text()
    )
    datasource = yaml.safe_load(
        (ROOT / "deploy/monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in datasource["datasources"]}
    assert dashboard["panels"] and all(p["datasource"]["uid"] in uids for p in dashboard["panels"])


def test_kubernetes_pods_carry_scrape_annotations_for_their_metrics_port():
    for name, service in (("gateway", "gateway"), ("torch-trainer", "torch_trainer"),
                          ("tf-trainer", "tf_trainer"), ("jax-trainer", "jax_trainer")):  # fmt: skip
        docs = yaml.safe_load_all((K8S / f"{name}.yaml").read_text())
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        assert ports["metrics"] == DEFAULT_METRICS_PORTS[service]


# --- each image's own command, run here as it would run in its container ---


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def image_contract(path: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """ENV, CMD and the HEALTHCHECK's command of a Dockerfile."""
    env, cmd, health = {}, [], []
    for op, arg in dockerfile_instructions(path):
        if op == "ENV":
            env.update(dict(pair.split("=", 1) for pair in arg.split()))
        elif op == "CMD":
            cmd = json.loads(arg)
        elif op == "HEALTHCHECK":
            health = json.loads(arg.split(" CMD ", 1)[1])
    return env, cmd, health


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_each_image_command_starts_its_service_with_the_compose_environment(tmp_path):
    compose = load_compose(COMPOSE)["services"]
    ports = {str(p): free_port() for p in (*DEFAULT_PORTS.values(), *DEFAULT_LINK_PORTS.values())}

    def local(value: str) -> str:
        value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)  # Compose's defaults
        # Container addresses (service:port, 0.0.0.0:port) become loopback with a free port.
        match = re.fullmatch(r"[\w.\-]+:(\d+)", value)
        match = match if match and match.group(1) in ports else None
        return f"127.0.0.1:{ports[match.group(1)]}" if match else value

    procs = {}
    try:
        for service in (*TRAINERS, "gateway"):
            image_env, cmd, health = image_contract(ROOT / "services" / service / "Dockerfile")
            env = {**image_env, **compose[service].get("environment", {})}
            assert set(env) >= {"TWINBENCH_HOME", "TWINBENCH_LISTEN"}
            env = {k: local(str(v)) for k, v in env.items()}
            env["TWINBENCH_HOME"] = str(tmp_path / service)  # the volume
            env["TWINBENCH_METRICS_LISTEN"] = "127.0.0.1:0"  # a free port, not the image's 80xx
            env.pop("PYTHONPATH", None)
            run_env = {**os.environ, **env}
            assert cmd[0] == "python" and health[0] == "python"
            procs[service] = subprocess.Popen(
                [sys.executable, *cmd[1:]], env=run_env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

            def healthy(service=service, health=health, run_env=run_env) -> bool:
                check = subprocess.run([sys.executable, *health[1:]], env=run_env, cwd=ROOT)
                assert check.returncode == 0 or procs[service].poll() is None, f"{service} exited"
                return check.returncode == 0

            until(healthy, f"{service} to be healthy", 120, poll_s=0.5)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)
    assert all(proc.returncode == 0 for proc in procs.values())  # SIGTERM is a clean stop
