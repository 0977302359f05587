"""Deployment files: every Kubernetes resource (the files and the rendered overlays) validates against the
schemas of a pinned Kubernetes version, and every feedline container is checked against the code it runs:
its arguments go through the real CLI parser and config loader, and ports, probes, workers, the drain and
mounts must agree with the configuration that results. The Dockerfile's entry point and health check too."""

from __future__ import annotations

import argparse
import http.server
import importlib.metadata
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from feedline.proto.v1 import SERVICE_NAME
from feedline.service import CollateOptions
from feedline.service._cli import build_parser, config_from_args
from feedline.service.server import ServeConfig

K8S_VERSION = "1.33"
"""Kubernetes release the manifests must validate against (native sidecars and gRPC probes are GA here)."""

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
VARIANTS: dict[str, tuple[str, str | None]] = {
    "shared-service": ("shared-service", None),
    "sidecar": ("sidecar", None),  # the sidecar component, through the overlay
    "shared-service+tls": ("shared-service", "tls"),
    "shared-service+datasets": ("shared-service", "datasets"),
}
"""What gets rendered and checked: each overlay, and the overlays with the optional components added."""
EXIT_SECONDS = 5
"""After the drain `feedline serve` waits up to this long for the servers to stop (_cli._serve_worker)."""


# --- reading and rendering ------------------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _referenced(kustomization: Path) -> dict[str, set[Path]]:
    """Files a kustomization names, by role: resources (files, not folders), patches, generator inputs."""
    doc = _load_all(kustomization)[0]
    here = kustomization.parent
    resources = {(here / r).resolve() for r in doc.get("resources", ())}
    generated = {(here / f.split("=")[-1]).resolve() for g in doc.get("configMapGenerator", ()) for f in g["files"]}
    return {
        "resources": {p for p in resources if p.is_file()},
        "patches": {(here / p["path"]).resolve() for p in doc.get("patches", ()) if "path" in p},
        "generated": generated,
    }


def _resource_files() -> list[Path]:
    return sorted({p for k in _kustomizations() for p in _referenced(k)["resources"]})


def _kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("rendering the overlays needs `kustomize` or `kubectl` (which embeds kustomize) on PATH")


@cache
def rendered(variant: str) -> tuple[dict[str, Any], ...]:
    """A variant as `kustomize build` renders it (an overlay, or a throwaway kustomization adding a component)."""
    overlay, component = VARIANTS[variant]
    command = _kustomize_command()
    with tempfile.TemporaryDirectory(prefix="feedline-kustomize-") as scratch:
        target = K8S / "overlays" / overlay
        if component is not None:  # kustomize takes relative paths only
            (Path(scratch) / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "resources": [os.path.relpath(target, scratch)],
                        "components": [os.path.relpath(K8S / "components" / component, scratch)],
                    }
                )
            )
            target = Path(scratch)
        out = subprocess.run([*command, str(target)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def _one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


# --- schemas -----------------------------------------------------------------------------------------------------


def test_schemas_are_pinned_to_a_version_the_validator_ships() -> None:
    assert K8S_VERSION in {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}


def test_validation_rejects_a_misspelt_field() -> None:
    doc = _load_all(K8S / "overlays" / "shared-service" / "pdb.yaml")[0]
    doc["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_resource_file_validates(path: Path) -> None:
    for doc in _load_all(path):
        _validate(doc)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_variant_validates(variant: str) -> None:
    docs = rendered(variant)
    assert docs
    for doc in docs:
        _validate(doc)


def test_every_manifest_file_is_used() -> None:
    used = {k.resolve() for k in _kustomizations()}
    for k in _kustomizations():
        used |= set().union(*_referenced(k).values())
    stray = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml") if p.resolve() not in used)
    assert not stray, f"YAML files no kustomization uses: {stray}"


def test_overlays_are_the_two_ways_to_run() -> None:
    assert OVERLAYS == ["shared-service", "sidecar"]
    assert sorted({c for _, c in VARIANTS.values() if c} | {"sidecar"}) == COMPONENTS
    assert {d["kind"] for d in rendered("shared-service")} == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert {d["kind"] for d in rendered("sidecar")} == {"ConfigMap", "PersistentVolumeClaim", "Job"}


# --- the feedline containers against the code -----------------------------------------------------------------


def _pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (*pod.get("initContainers", ()), *pod["containers"])


def _feedline_container(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in _containers(pod) if c["name"] == "feedline"]
    return found


def parse_serve_args(args: list[str]) -> argparse.Namespace:
    """The container's arguments through the real `feedline` parser; an unknown flag or bad value fails."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`feedline {' '.join(args)}` does not parse (exit {exc.code})")
    assert parsed.command == "serve"
    return parsed


def test_parse_serve_args_fails_on_an_unknown_flag() -> None:
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse_serve_args(["serve", "--config", "/etc/feedline/feedline.yaml", "--no-such-flag"])


def _config_file(
    pod: dict[str, Any], container: dict[str, Any], docs: tuple[dict[str, Any], ...], path: Path, tmp_path: Path
) -> Path:
    """The rendered ConfigMap file the container sees at ``path``, written to ``tmp_path``."""
    mount = next(m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    local = tmp_path / path.name
    local.write_text(config_map["data"][path.name], encoding="utf-8")
    return local


def serve_config(
    pod: dict[str, Any], docs: tuple[dict[str, Any], ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ServeConfig:
    """The ServeConfig `feedline serve` builds in this container: its args, mounted config file and env."""
    container = _feedline_container(pod)
    assert "command" not in container, "the image's ENTRYPOINT (feedline) must run"
    args = parse_serve_args(container["args"])
    if args.config is not None:
        args.config = _config_file(pod, container, docs, args.config, tmp_path)
    for name in [n for n in os.environ if n.startswith("FEEDLINE_")]:
        monkeypatch.delenv(name)
    for env in container.get("env", ()):
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    return config_from_args(args)


@pytest.fixture(params=list(VARIANTS))
def overlay_pod(request: pytest.FixtureRequest) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    docs = rendered(request.param)
    (pod,) = [p for p in _pod_specs(docs) if any(c["name"] == "feedline" for c in _containers(p))]
    return docs, pod


def _cpu(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("feedline_healthcheck", DOCKER / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _healthcheck_in_image() -> str:
    (dest,) = [arg.split()[-1] for op, arg in _dockerfile() if op == "COPY" and "healthcheck.py" in arg]
    return dest


def test_container_config_agrees_with_ports_and_probes(
    overlay_pod: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, pod = overlay_pod
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    container = _feedline_container(pod)
    assert {p["containerPort"] for p in container["ports"]} == {config.grpc_port, config.http_port}
    assert config.host == "0.0.0.0", "the kubelet probes the pod address, not localhost"
    probes = [container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")]
    if config.tls_cert is None:  # the kubelet's gRPC probes, on grpc.health.v1
        assert [probe["grpc"]["port"] for probe in probes] == [config.grpc_port] * 3
        assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    else:  # gRPC probes cannot speak TLS: the image's health check, over HTTPS to /readyz
        assert all("grpc" not in probe for probe in probes)
        assert {tuple(probe["exec"]["command"]) for probe in probes} == {("python", _healthcheck_in_image())}
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert _healthcheck_module().readyz_url(env) == f"https://127.0.0.1:{config.http_port}/readyz"


def test_tls_files_come_from_a_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered("shared-service+tls")
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    files = (config.tls_cert, config.tls_key, config.tls_client_ca)
    assert all(f is not None for f in files)
    mounts = {Path(m["mountPath"]): m for m in _feedline_container(pod)["volumeMounts"]}
    for path in files:
        assert path is not None
        mount = mounts[path.parent]
        assert mount["readOnly"] and any("secret" in v for v in pod["volumes"] if v["name"] == mount["name"])


def test_drain_fits_in_the_termination_grace_period(
    overlay_pod: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, pod = overlay_pod
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    container = _feedline_container(pod)
    pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pause[0] == "sleep"
    needed = float(pause[1]) + config.grace_period_s + EXIT_SECONDS
    assert needed <= pod["terminationGracePeriodSeconds"] <= needed + 15
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > config.grace_period_s, (
        "a draining pod (health NOT_SERVING) must not be restarted by its liveness probe"
    )


def test_workers_fit_the_cpu_request(overlay_pod: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs, pod = overlay_pod
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    resources = _feedline_container(pod)["resources"]
    assert config.workers <= math.ceil(_cpu(resources["requests"]["cpu"]))
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


def test_processors_load_from_read_only_mounts(
    overlay_pod: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, pod = overlay_pod
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    mounts = _feedline_container(pod)["volumeMounts"]
    read_only = [Path(m["mountPath"]) for m in mounts if m.get("readOnly")]
    assert Path("/models") in read_only
    for spec in config.processor_specs:
        CollateOptions.from_mapping(spec.defaults)
        if spec.source.startswith("/"):
            assert any(Path(spec.source).is_relative_to(m) for m in read_only), spec


def test_container_runs_unprivileged_on_a_read_only_root(overlay_pod: Any) -> None:
    _, pod = overlay_pod
    container = _feedline_container(pod)
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert context["runAsNonRoot"] and context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    scratch = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
    assert scratch and all("emptyDir" in v for v in pod["volumes"] if v["name"] in scratch)


# --- overlay-specific wiring -----------------------------------------------------------------------------------


def test_datasets_come_from_a_read_only_volume_and_index_into_a_writable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered("shared-service+datasets")
    (pod,) = [p for p in _pod_specs(docs) if any(c["name"] == "feedline" for c in _containers(p))]
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    container = _feedline_container(pod)
    mounts = {Path(m["mountPath"]): m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert config.data_roots and config.data_urls
    for root in config.data_roots:
        mount = mounts[root]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim)
        assert mount["readOnly"] and pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    cache = mounts[config.dataset_cache_dir]
    assert not cache.get("readOnly") and "emptyDir" in volumes[cache["name"]]
    assert all(ref["secretRef"]["optional"] for ref in container["envFrom"])


def test_shared_service_wiring() -> None:
    docs = rendered("shared-service")
    deployment, service = _one(docs, "Deployment"), _one(docs, "Service")
    hpa, pdb = _one(docs, "HorizontalPodAutoscaler"), _one(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert service["spec"]["clusterIP"] == "None", "headless, for client-side round-robin"
    for selector in (
        service["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    container = _feedline_container(deployment["spec"]["template"]["spec"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["port"]: named[p["targetPort"]] for p in service["spec"]["ports"]} == {v: v for v in named.values()}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] == 1


def test_sidecar_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered("sidecar")
    pod = _one(docs, "Job")["spec"]["template"]["spec"]
    sidecar = _feedline_container(pod)
    assert sidecar in pod["initContainers"] and sidecar["restartPolicy"] == "Always"
    config = serve_config(pod, docs, tmp_path, monkeypatch)
    trainer = next(c for c in pod["containers"] if c["name"] == "trainer")
    endpoint = next(e["value"] for e in trainer["env"] if e["name"] == "FEEDLINE_ENDPOINTS")
    assert endpoint == f"localhost:{config.grpc_port}"
    assert sidecar["image"] == f"feedline:{_image_tag('sidecar')}"


def _image_tag(overlay: str) -> str:
    doc = _load_all(K8S / "overlays" / overlay / "kustomization.yaml")[0]
    return next(i["newTag"] for i in doc["images"] if i["name"] == "feedline")


# --- the image ---------------------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    steps = _dockerfile()
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) == 2
    final = steps[stages[-1] :]
    user = [arg for op, arg in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert [arg for op, arg in final if op == "ENTRYPOINT"] == ['["feedline"]']
    assert any(op == "HEALTHCHECK" for op, _ in final)
    installs = [re.findall(r"pip install (\S+)", arg) for op, arg in steps if op == "RUN"]
    assert [i for i in installs if i] == [['".[service]"']], "the service install only: no torch"


def test_dockerfile_copies_files_that_exist() -> None:
    for op, arg in _dockerfile():
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_entrypoint_is_the_installed_command() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="feedline")
    assert script.value == "feedline.service._cli:main"


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_health_check_script_follows_readyz(status: int, code: int) -> None:
    handler = type("Handler", (_Readyz,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"FEEDLINE_HTTP_PORT": str(server.server_address[1])}
        done = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == code


def test_health_check_script_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")],
        env={"FEEDLINE_HTTP_PORT": str(port)},
        timeout=30,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "not ready" in done.stderr
