"""The deployment checked offline against the code it runs.

``deploy/`` is rendered with ``kubectl kustomize`` (the secrets example's placeholders stand in
for the git-ignored ``deploy/secrets/secrets.env``), then checked for what a cluster would only
reveal at run time: every env var our containers get is one ``common.settings`` reads and
parses; probes hit the paths and ports the code serves; sizes, threads and grace periods fit
the settings; GPU scheduling; KEDA's target; no credentials in the repository; the images'
files and packages; ``deploy-local-dev.sh``'s dry run and its errors.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.models import Registry
from common.queue import WAITING_LISTS
from common.settings import LOCAL_DEV_MINIO_USER, Owner, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VARIANTS = ("local", "gpu", "local-keda", "gpu-keda", "services")
OUR_IMAGES = {"demucs-worker": "worker", "demucs-rest": "rest"}
# Env vars set for something other than our Python code, and who reads them.
RUNTIME_ENV = {"NVIDIA_DISABLE_REQUIRES": "the NVIDIA container runtime (GPU overlay)"}
REST_RUNTIME_ENV = {"FORWARDED_ALLOW_IPS": "uvicorn: whose X-Forwarded-For it believes"}
DOCKERFILE_ENV = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}  # read by the interpreter


# -- what the code reads and serves --------------------------------------------------------
class _RecordingEnv(dict):
    """An empty environment that records every name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return super().get(key, default)


def settings_env_names() -> set[str]:
    """The env var names ``Settings.from_env`` reads: one per Settings field, aliases included."""
    env = _RecordingEnv()
    Settings.from_env(env)
    return env.names


def test_settings_env_names_are_one_per_field() -> None:
    names = settings_env_names()
    assert len(names) == len(fields(Settings))
    upper = {field.name.upper() for field in fields(Settings)}
    assert {"REDIS_HOST", "METRICS_PORT", "REST_PORT", "MP3_BITRATE", "HOSTNAME"} <= names
    assert names - upper == {"MP3_BITRATE", "HOSTNAME"}  # the two aliases


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the worker's and REST's Prometheus metrics must not
    meet in this test process) and return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_worker_health_endpoint_serves_healthz() -> None:
    """The path the worker's probes use is the one ``common.observability`` serves."""
    answer = run_python(
        "import urllib.request\n"
        "from common.observability import serve\n"
        "server = serve(0, lambda: (True, 'ok'))\n"
        "url = 'http://127.0.0.1:%d/healthz' % server.server_address[1]\n"
        "with urllib.request.urlopen(url, timeout=5) as answer:\n"
        "    print(answer.status, answer.read().decode())\n")
    assert answer.split(" ", 1)[0] == "200"
    assert json.loads(answer.split(" ", 1)[1]) == {"ok": True, "reason": "ok"}


def rest_routes() -> set[str]:
    """The paths the REST app serves (built with settings that are never connected)."""
    pytest.importorskip("fastapi")
    out = run_python(
        "from rest.app import create_app\n"
        "from common.settings import Settings\n"
        "app = create_app(Settings(redis_port=1, minio_endpoint='127.0.0.1:1'))\n"
        "def paths(routes, prefix=''):\n"
        "    for route in routes:\n"
        "        path = prefix + getattr(route, 'path', '')\n"
        "        yield path\n"
        "        yield from paths(getattr(route, 'routes', ()), path)\n"
        "print('\\n'.join(p for p in paths(app.routes) if p))\n")
    return set(out.split())


# -- rendering -----------------------------------------------------------------------------
def find_kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"  # make setup's .venv/bin/kubectl
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl")


@pytest.fixture(scope="session")
def kubectl() -> str:
    found = find_kubectl()
    if not found:
        pytest.skip("kubectl is not installed (make setup installs it into .venv/bin)")
    return found


@pytest.fixture(scope="session")
def rendered(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every variant rendered from a copy of deploy/ with the example secrets."""
    copy = tmp_path_factory.mktemp("render") / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets.env", ".build.*"))
    shutil.copy(DEPLOY / "secrets" / "secrets.env.example", copy / "secrets" / "secrets.env")
    for overlay in ("local", "gpu"):
        variant = copy / f"{overlay}-keda"
        variant.mkdir()
        (variant / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"../overlays/{overlay}"], "components": ["../components/keda"]}))
    sources = {"local": "overlays/local", "gpu": "overlays/gpu", "local-keda": "local-keda",
               "gpu-keda": "gpu-keda", "services": "services"}
    out = {}
    for name, source in sources.items():
        result = subprocess.run([kubectl, "kustomize", str(copy / source)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{source} does not render: {result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def get(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "Job")]


def our_container(docs: list[dict], image: str) -> tuple[dict, dict]:
    """(workload, container) running one of our images."""
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].rsplit("/", 1)[-1].split(":")[0] == image:
                return workload, container
    raise AssertionError(f"no container runs {image}")


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets; every ConfigMap, Secret and key it names must exist
    (unless marked optional)."""
    def config_map(name: str) -> dict[str, str]:
        return get(docs, "ConfigMap", name).get("data") or {}

    def secret(name: str) -> dict[str, str]:
        data = get(docs, "Secret", name).get("data") or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(source["configMapRef"]["name"]))
        else:
            env.update(secret(source["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"]["configMapKeyRef"]
        data = secret(ref["name"]) if "secretKeyRef" in item["valueFrom"] else \
            config_map(ref["name"])
        assert ref["key"] in data or ref.get("optional"), f"{item['name']}: no key {ref['key']}"
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
    return env


def app_settings(docs: list[dict], image: str) -> Settings:
    """The Settings our code builds from what the manifests give the container."""
    _, container = our_container(docs, image)
    env = {k: v for k, v in container_env(docs, container).items() if k not in RUNTIME_ENV}
    return Settings.from_env(env)


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"container {container['name']} has no port named {port}"
    return named[port]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (cores for CPU, bytes for memory)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6,
             "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and (match.group(2) in units or not match.group(2)), f"bad quantity {text}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def pod_specs(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    for workload in workloads(docs):
        yield workload, workload["spec"]["template"]["spec"]


# -- env and settings ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["local", "gpu", "local-keda", "gpu-keda"])
@pytest.mark.parametrize("image", sorted(OUR_IMAGES))
def test_containers_get_only_env_the_code_reads(rendered: dict, variant: str,
                                                 image: str) -> None:
    docs = rendered[variant]
    _, container = our_container(docs, image)
    allowed = settings_env_names() | (set(RUNTIME_ENV) if image == "demucs-worker"
                                      else set(REST_RUNTIME_ENV))
    unknown = set(container_env(docs, container)) - allowed
    assert not unknown, f"{image} gets env vars no code reads: {sorted(unknown)}"
    assert "HOSTNAME" not in container_env(docs, container)  # the pod name, set by Kubernetes


@pytest.mark.parametrize("variant", ["local", "gpu"])
@pytest.mark.parametrize("image", sorted(OUR_IMAGES))
def test_settings_parse_from_the_manifests(rendered: dict, variant: str, image: str) -> None:
    settings = app_settings(rendered[variant], image)  # raises on a value the code rejects
    assert settings.redis_host == "redis" and settings.minio_endpoint.startswith("minio:")
    redis_port = get(rendered[variant], "Service", "redis")["spec"]["ports"][0]["port"]
    assert settings.redis_port == redis_port
    minio_ports = {p["port"] for p in get(rendered[variant], "Service", "minio")["spec"]["ports"]}
    assert int(settings.minio_endpoint.split(":")[1]) in minio_ports
    assert settings.minio_access_key != LOCAL_DEV_MINIO_USER  # from the Secret, not the default
    assert settings.redis_password


def test_worker_and_rest_share_buckets_and_keys(rendered: dict) -> None:
    worker = app_settings(rendered["local"], "demucs-worker")
    rest = app_settings(rendered["local"], "demucs-rest")
    for name in ("queue_bucket", "output_bucket", "output_key", "redis_host", "redis_port",
                 "minio_endpoint", "max_input_mb", "max_duration_s", "status_ttl_s",
                 "retention_days", "mp3_bitrate_kbps"):
        assert getattr(worker, name) == getattr(rest, name), name


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_worker_and_rest_read_one_model_registry(rendered: dict, variant: str) -> None:
    """MODELS_FILE is the ConfigMap demucs-models, mounted into both; it lists DEMUCS_MODEL
    with its files' SHA-256; the worker's init container fetches with the same settings."""
    docs = rendered[variant]
    registries = []
    for image in OUR_IMAGES:
        workload, container = our_container(docs, image)
        spec = workload["spec"]["template"]["spec"]
        settings = app_settings(docs, image)
        models_file = Path(settings.models_file or "")
        volumes = {v["name"]: v for v in spec["volumes"]}
        mount = next(m for m in container["volumeMounts"]
                     if m["mountPath"] == str(models_file.parent))
        assert mount["readOnly"] is True
        config_map = get(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        registry = Registry.parse(config_map["data"][models_file.name], settings.demucs_model)
        assert all(f.sha256 and f.url for m in registry.models for f in m.files or ())
        registries.append(registry)
    assert registries[0] == registries[1]
    workload, worker = our_container(docs, "demucs-worker")
    init = workload["spec"]["template"]["spec"]["initContainers"]
    assert [(c["image"], c["command"]) for c in init] == [
        (worker["image"], ["python3", "-m", "worker.demucs.weights", "fetch"])]
    assert init[0]["envFrom"] == worker["envFrom"]
    assert {m["mountPath"] for m in init[0]["volumeMounts"]} >= {"/etc/demucs", "/tmp"}
    assert init[0]["securityContext"] == worker["securityContext"]


# -- probes and ports ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_worker_probes_hit_healthz_on_metrics_port(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    workload, container = our_container(docs, "demucs-worker")
    settings = app_settings(docs, "demucs-worker")
    assert settings.metrics_port > 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert port_number(container, http["port"]) == settings.metrics_port, probe
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_rest_probes_hit_the_probe_port_and_the_service_the_rest_port(rendered: dict,
                                                                     variant: str) -> None:
    docs = rendered[variant]
    workload, container = our_container(docs, "demucs-rest")
    settings = app_settings(docs, "demucs-rest")
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz"
    assert port_number(container, readiness["port"]) == settings.metrics_port
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] in ("/healthz", "/")
    assert port_number(container, liveness["port"]) == settings.metrics_port
    service = get(docs, "Service", "rest")
    assert [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]] == \
        [settings.rest_port]  # the probe port is not exposed
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port


def test_rest_serves_the_probed_paths_and_no_metrics_on_the_api_port() -> None:
    routes = rest_routes()
    assert {"/healthz", "/"} <= routes
    assert "/metrics" not in routes  # Prometheus scrapes METRICS_PORT, which no Service exposes


def test_services_select_pods_and_name_their_ports(rendered: dict) -> None:
    for variant in ("local", "services"):
        docs = rendered[variant]
        for service in objects(docs, "Service"):
            selector = service["spec"]["selector"]
            matched = [spec for workload, spec in pod_specs(docs)
                       if selector.items() <= workload["spec"]["template"]["metadata"]
                       ["labels"].items()]
            assert len(matched) == 1, f"Service {service['metadata']['name']}"
            for port in service["spec"]["ports"]:
                assert any(port_number(c, port["targetPort"]) for c in matched[0]["containers"])


def test_ingress_routes_to_rest_and_takes_the_largest_upload(rendered: dict) -> None:
    docs = rendered["local"]
    ingress = get(docs, "Ingress", "rest")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = get(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    base64_upload_mb = app_settings(docs, "demucs-rest").max_input_mb * 4 / 3
    assert quantity(body.replace("m", "M")) / 1e6 >= base64_upload_mb


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_rest_answers_the_ingress_host_and_the_clusters_names(rendered: dict,
                                                              variant: str) -> None:
    """REST refuses any other Host (ALLOWED_HOSTS): the Ingress' and the Service's names pass,
    and the default admits them too."""
    docs = rendered[variant]
    hosts = {rule.get("host") for rule in get(docs, "Ingress", "rest")["spec"]["rules"]}
    assert None not in hosts, "an Ingress rule without host: every Host reaches REST"
    allowed = set(app_settings(docs, "demucs-rest").allowed_host_names)
    assert hosts <= allowed and hosts <= set(Settings().allowed_host_names)
    service = get(docs, "Service", "rest")["metadata"]["name"]
    assert {service, f"{service}.demucs.svc.cluster.local", "localhost"} <= allowed


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_rest_believes_x_forwarded_for_from_the_ingress_alone(rendered: dict,
                                                              variant: str) -> None:
    """The rate limit's identity: uvicorn's FORWARDED_ALLOW_IPS names the ingress controller's
    network, never `*` nor loopback (a port-forwarded peer), and is REST's alone."""
    docs = rendered[variant]
    _, rest = our_container(docs, "demucs-rest")
    trusted = container_env(docs, rest).get("FORWARDED_ALLOW_IPS")
    assert trusted, "unset, uvicorn believes loopback alone: behind the ingress, one bucket"
    networks = [ipaddress.ip_network(item.strip()) for item in trusted.split(",")]  # no "*"
    loopback = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert not [n for n in networks for a in loopback if a.version == n.version and a in n]
    _, worker = our_container(docs, "demucs-worker")
    assert "FORWARDED_ALLOW_IPS" not in container_env(docs, worker)


# -- sizing, shutdown, storage, hardening --------------------------------------------------
def test_every_container_has_requests_and_limits(rendered: dict) -> None:
    for workload, spec in pod_specs(rendered["gpu-keda"]):
        for container in spec["containers"]:
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                request, limit = resources["requests"][kind], resources["limits"][kind]
                assert quantity(request) <= quantity(limit), (workload["metadata"]["name"], kind)


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_worker_sized_for_demucs_and_threads_match_cpu_limit(rendered: dict,
                                                              variant: str) -> None:
    docs = rendered[variant]
    _, container = our_container(docs, "demucs-worker")
    settings = app_settings(docs, "demucs-worker")
    resources = container["resources"]
    assert quantity(resources["requests"]["memory"]) >= 3 * 2**30  # htdemucs: ~3 GB steady
    # + ~1.4 MB per second of audio for the longest song separated in one piece: songs over
    # CHUNK_OVER_S are split into CHUNK_S chunks (memory flat with length, bench/long_songs.py)
    longest_whole_s = settings.chunk_over_s or settings.max_duration_s
    assert quantity(resources["limits"]["memory"]) >= 3 * 2**30 + 1.4e6 * longest_whole_s
    assert settings.demucs_threads == quantity(resources["limits"]["cpu"])
    assert "# sized from bench" in (DEPLOY / "base" / "worker.yaml").read_text()


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_grace_period_outlasts_the_worker_shutdown(rendered: dict, variant: str) -> None:
    docs = rendered[variant]
    workload, _ = our_container(docs, "demucs-worker")
    settings = app_settings(docs, "demucs-worker")
    grace_s = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the worker finishes within SHUTDOWN_GRACE_S, then returns jobs and leaves: 10 s margin
    assert grace_s >= settings.shutdown_grace_s + 10


def test_work_dir_and_tmp_are_sized_empty_dirs(rendered: dict) -> None:
    docs = rendered["local"]
    for image in OUR_IMAGES:
        workload, container = our_container(docs, image)
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        work_dir = app_settings(docs, image).work_dir or "/tmp"
        for path in {work_dir, "/tmp"}:  # the root filesystem is read-only
            assert path in mounts, f"{image}: nothing mounted at {path}"
            assert mounts[path]["emptyDir"]["sizeLimit"], f"{image}: {path} unbounded"


def test_pods_are_hardened(rendered: dict) -> None:
    dockerfile_users = {image: dockerfile_user(OUR_IMAGES[image]) for image in OUR_IMAGES}
    for workload, spec in pod_specs(rendered["gpu-keda"]):
        name = workload["metadata"]["name"]
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            image = container["image"].rsplit("/", 1)[-1].split(":")[0]
            if image in dockerfile_users:
                assert spec["securityContext"]["runAsUser"] == dockerfile_users[image], name


def test_worker_disruption_budget_selects_the_workers(rendered: dict) -> None:
    docs = rendered["local"]
    workload, _ = our_container(docs, "demucs-worker")
    budget = get(docs, "PodDisruptionBudget", "worker")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] >= 1  # a drain works with a single worker


def pod_labels(docs: list[dict], name: str) -> dict[str, str]:
    workload = next(d for d in workloads(docs) if d["metadata"]["name"] == name)
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_network_policies_let_only_the_service_reach_redis_and_minio(rendered: dict,
                                                                     variant: str) -> None:
    docs = rendered[variant]
    worker, rest = pod_labels(docs, "worker"), pod_labels(docs, "rest")
    for store, port in (("redis", 6379), ("minio", 9000)):
        policy = get(docs, "NetworkPolicy", store)
        assert selects(policy["spec"]["podSelector"], pod_labels(docs, store))
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [port]
        pod_peers = [peer["podSelector"] for peer in rule["from"] if "podSelector" in peer]
        assert len(pod_peers) == 2
        assert any(selects(peer, worker) for peer in pod_peers)
        assert any(selects(peer, rest) for peer in pod_peers)
        others = [peer for peer in rule["from"] if "podSelector" not in peer]
        assert all(peer["namespaceSelector"]["matchLabels"] ==
                   {"kubernetes.io/metadata.name": "keda"} for peer in others)


@pytest.mark.parametrize("name", ["worker", "rest"])
def test_network_policies_keep_callbacks_out_of_private_networks(rendered: dict,
                                                                 name: str) -> None:
    docs = rendered["local"]
    policy = next(p for p in objects(docs, "NetworkPolicy")
                  if selects(p["spec"]["podSelector"], pod_labels(docs, name)))
    assert "Egress" in policy["spec"]["policyTypes"]
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule["to"]
              if "ipBlock" in peer]
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}
    refused = {cidr for b in blocks for cidr in b["except"]}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
            "127.0.0.0/8", "fc00::/7", "fe80::/10"} <= refused
    in_cluster = [peer["podSelector"] for rule in policy["spec"]["egress"] for peer in rule["to"]
                  if "podSelector" in peer and "namespaceSelector" not in peer]
    assert {tuple(sorted(p["matchLabels"].items())) for p in in_cluster} == \
        {(("app.kubernetes.io/name", n),) for n in ("redis", "minio", "demucs-rest")}


# -- GPU and KEDA ---------------------------------------------------------------------------
def test_gpu_overlay_schedules_the_worker_on_a_gpu(rendered: dict) -> None:
    workload, container = our_container(rendered["gpu"], "demucs-worker")
    spec = workload["spec"]["template"]["spec"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               for t in spec["tolerations"])
    assert app_settings(rendered["gpu"], "demucs-worker").demucs_device == "cuda"
    assert workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # no spare GPU


def test_only_the_gpu_overlay_asks_for_gpus(rendered: dict) -> None:
    for variant in ("local", "gpu"):
        for workload, spec in pod_specs(rendered[variant]):
            wants_gpu = any("nvidia.com/gpu" in c["resources"].get("limits", {})
                            for c in spec["containers"])
            is_gpu_worker = variant == "gpu" and workload["metadata"]["name"] == "worker"
            assert wants_gpu == is_gpu_worker, (variant, workload["metadata"]["name"])
            assert ("nodeSelector" in spec) == is_gpu_worker
    local = app_settings(rendered["local"], "demucs-worker")
    assert local.demucs_device == "cpu"


def test_keda_scales_the_worker_on_the_queue(rendered: dict) -> None:
    docs = rendered["local-keda"]
    assert not objects(rendered["local"], "ScaledObject")  # optional: a component
    scaled = get(docs, "ScaledObject", "worker")
    workload, container = our_container(docs, "demucs-worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", workload["metadata"]["name"])
    assert "replicas" not in workload["spec"]  # a re-apply must not reset KEDA's count
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # the sum of every list where jobs wait, the intake and each lane
    triggers = scaled["spec"]["triggers"]
    lists = {trigger["name"]: trigger["metadata"]["listName"] for trigger in triggers}
    assert lists == dict(WAITING_LISTS)
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert sorted(modifiers["formula"].split(" + ")) == sorted(WAITING_LISTS)
    assert float(modifiers["target"]) == 1
    redis_service = get(docs, "Service", "redis")
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        host, port = meta["address"].rsplit(":", 1)
        assert host.split(".")[:2] == ["redis", redis_service["metadata"]["namespace"]]
        assert int(port) == redis_service["spec"]["ports"][0]["port"]
        assert meta["passwordFromEnv"] in {item["name"] for item in container["env"]}
    settings = app_settings(docs, "demucs-worker")
    scale_down = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
        "scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= settings.job_timeout_s


# -- credentials ----------------------------------------------------------------------------
CREDENTIAL_LITERALS = (
    # the lab's leaked password and MinIO's default user (spelled so this file does not match)
    re.compile("rootpass" + "123|" + LOCAL_DEV_MINIO_USER),
    re.compile(r"""(password|secret_?key|access_?key)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{6,}""",
               re.IGNORECASE),
)


def deployment_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.name != "secrets.env" and ".build." not in str(p)]
    return [*files, ROOT / "worker" / "Dockerfile", ROOT / "rest" / "Dockerfile",
            ROOT / "worker" / "Makefile", ROOT / "rest" / "Makefile",
            ROOT / "deploy-local-dev.sh", ROOT / ".dockerignore"]


def test_no_credential_literals_outside_examples() -> None:
    checked = [p for p in deployment_files() if "example" not in str(p.relative_to(ROOT))]
    assert len(checked) > 15
    for path in checked:
        text = path.read_text()
        for pattern in CREDENTIAL_LITERALS:
            match = pattern.search(text)
            assert not match, f"{path.relative_to(ROOT)}: {match.group(0)!r}"


def test_credentials_come_from_the_git_ignored_generator_file(rendered: dict) -> None:
    kustomization = yaml.safe_load((DEPLOY / "secrets" / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "demucs-credentials" and generator["envs"] == ["secrets.env"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/secrets.env"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0, "deploy/secrets/secrets.env must be git-ignored"
    for path in DEPLOY.rglob("*.yaml"):
        if "example" not in path.name:
            for doc in yaml.safe_load_all(path.read_text()):
                assert not (doc and doc.get("kind") == "Secret"), f"a Secret in {path}"
    # The example holds only placeholders, and every key the manifests use.
    example = dict(line.split("=", 1) for line in
                   (DEPLOY / "secrets" / "secrets.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert all(value == "" or value.startswith("CHANGE-ME") for value in example.values())
    manifest = yaml.safe_load((DEPLOY / "secrets" / "secret.example.yaml").read_text())
    assert set(manifest["stringData"]) == set(example)
    docs = rendered["gpu-keda"]
    (secret,) = objects(docs, "Secret")
    assert secret["metadata"]["name"].startswith("demucs-credentials-")  # generated: hashed
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            container_env(docs, container)  # every secretKeyRef resolves
    # no placeholder value leaked into anything but the Secret
    others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert "CHANGE-ME" not in others


# -- images ---------------------------------------------------------------------------------
def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of ``<name>/Dockerfile``, continuation lines joined."""
    text = (ROOT / name / "Dockerfile").read_text()
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            out.append((instruction.upper(), arguments.strip()))
    return out


def dockerfile_user(name: str) -> int:
    users = [args for instruction, args in dockerfile(name) if instruction == "USER"]
    uid = int(users[-1].split(":")[0])
    assert uid != 0
    return uid


def pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("name", ["worker", "rest"])
def test_dockerfile_copies_files_that_exist(name: str) -> None:
    for instruction, args in dockerfile(name):
        if instruction == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}/Dockerfile copies missing {source}"
        if instruction == "ENV":
            for name_value in re.findall(r"(\w+)=", args):
                assert name_value in settings_env_names() | DOCKERFILE_ENV, name_value


def test_worker_image_runs_the_daemon_as_pid_1() -> None:
    steps = dockerfile("worker")
    assert steps[0] == ("FROM", "xserrat/facebook-demucs:latest")
    entrypoint = json.loads(next(a for i, a in steps if i == "ENTRYPOINT"))
    assert entrypoint[0] == "python3"  # exec form, not the base image's `bash -c`
    script = entrypoint[1]
    assert script == "/app/worker/worker.py" and ("COPY", "worker/ /app/worker/") in steps
    assert (ROOT / "worker" / "worker.py").exists()
    assert ("COPY", "common/ /app/common/") in steps  # the worker's own and the shared
    assert not any(i == "CMD" for i, _ in steps)


def test_rest_image_runs_uvicorn_on_rest_port() -> None:
    steps = dockerfile("rest")
    command = " ".join(json.loads(next(a for i, a in steps if i == "CMD")))
    assert "exec uvicorn rest.app:app" in command
    assert '--port "${REST_PORT:-' + str(Settings().rest_port) + '}"' in command
    assert (ROOT / "rest" / "app.py").exists()
    # rest.app:app, what the image serves, is the environment's app, built on first use
    assert run_python("from rest.app import app\nprint(type(app).__name__)").split() == \
        ["FastAPI"]
    assert ("ENV", f"REST_PORT={Settings().rest_port}") in steps


def test_image_requirements_pin_what_pyproject_pins() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {}
    rest_only = set()
    for requirement in project["dependencies"] + project["optional-dependencies"]["rest"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            wanted[name.lower().replace("_", "-")] = version
            if requirement in project["optional-dependencies"]["rest"]:
                rest_only.add(name.lower().replace("_", "-"))
    worker = pinned(ROOT / "worker" / "requirements.txt")
    rest = pinned(ROOT / "rest" / "requirements.txt")
    for name, version in wanted.items():
        assert rest.get(name) == version, f"rest/requirements.txt: {name}"
        if name not in rest_only:
            assert worker.get(name) == version, f"worker/requirements.txt: {name}"
    # the base image's torch 1.13 needs its numpy<2: the worker image must not touch them
    assert not {"numpy", "torch", "torchaudio", "demucs"} & set(worker)
    installs = [args for step, args in dockerfile("worker") if step == "RUN" and "pip" in args]
    assert installs and all("--no-deps" in args for args in installs)


# -- deploy-local-dev.sh --------------------------------------------------------------------
def run_script(path: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / path), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_local_dev_dry_run_renders_without_a_cluster(kubectl: str, tmp_path: Path) -> None:
    secrets = DEPLOY / "secrets" / "secrets.env"
    existed = secrets.exists()
    env = {"PATH": f"{Path(kubectl).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "KUBECONFIG": str(tmp_path / "none")}
    result = run_script("deploy-local-dev.sh", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout.split("\n# Reach them")[0]) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in workloads(docs)} == \
        {("StatefulSet", "redis"), ("StatefulSet", "minio")}
    for ports in ("6379:6379", "9000:9000", "9001:9001"):
        assert re.search(rf"port-forward svc/\w+ {ports}", result.stdout), ports
    assert secrets.exists() == existed  # a dry run writes nothing


def test_local_dev_fails_clearly_without_kubectl(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # the tools the script uses, but no kubectl
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "cat", "mktemp", "cp", "rm", "od", "tr", "grep"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = run_script("deploy-local-dev.sh", "--dry-run", env={"PATH": str(bin_dir)})
    assert result.returncode != 0
    assert "kubectl not found" in result.stderr
    assert result.stdout == ""


def test_local_dev_fails_clearly_without_a_context(kubectl: str, tmp_path: Path) -> None:
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\n")
    env = {"PATH": f"{Path(kubectl).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "KUBECONFIG": str(tmp_path / "config")}
    result = run_script("deploy-local-dev.sh", env=env)
    assert result.returncode != 0
    assert "no current kube context" in result.stderr


def test_port_forward_refuses_clearly_without_a_cluster(kubectl: str, tmp_path: Path) -> None:
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECTL": kubectl,
           "KUBECONFIG": str(tmp_path / "config")}
    result = subprocess.run(["make", "-s", "port-forward", f"KUBECTL={kubectl}"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "port-forward.sh: error: no current kube context" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_apply_dry_run_sets_images_and_keda(kubectl: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECTL": kubectl, "KEDA": "1",
           "WORKER_IMAGE": "registry.test:5000/team/demucs-worker:abc1",
           "REST_IMAGE": "registry.test:5000/team/demucs-rest:abc1"}
    result = run_script("deploy/apply.sh", "--dry-run", "gpu", env=env)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert our_container(docs, "demucs-worker")[1]["image"] == \
        "registry.test:5000/team/demucs-worker:abc1"
    assert our_container(docs, "demucs-rest")[1]["image"] == \
        "registry.test:5000/team/demucs-rest:abc1"
    assert objects(docs, "ScaledObject")
    env["WORKER_IMAGE"] = "registry.test:5000/team/demucs-worker"  # no tag
    result = run_script("deploy/apply.sh", "--dry-run", "gpu", env=env)
    assert result.returncode != 0 and "has no tag" in result.stderr


@pytest.mark.parametrize("variant", ["local", "gpu"])
def test_the_worker_and_rest_get_the_same_shared_settings(rendered: dict, variant: str) -> None:
    """Every setting owned ``shared`` has one value in both containers (``common.env``, or the
    Secret both get); neither gets the other's own settings."""
    docs = rendered[variant]
    worker = container_env(docs, our_container(docs, "demucs-worker")[1])
    rest = container_env(docs, our_container(docs, "demucs-rest")[1])
    differ = [name for name in Settings.owned_by(Owner.SHARED)
              if worker.get(name) != rest.get(name)]
    assert not differ, f"shared settings the two processes get apart: {differ}"
    assert not set(Settings.owned_by(Owner.REST)) & set(worker)
    assert not set(Settings.owned_by(Owner.WORKER)) & set(rest)
