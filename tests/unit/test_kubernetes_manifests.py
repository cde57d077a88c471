"""deploy/kubernetes: every manifest is a valid Kubernetes object (schemas of kubernetes-validate,
strict: an unknown or misspelt field fails), and the manifests agree with the gateway: the
settings they set are the gateway's own and parse, the probes and Services point at the ports
the container listens on, selectors select the pods, and every container asks for resources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes still maintained upstream when written


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def gateway_deployment() -> dict[str, Any]:
    (deployment,) = [d for d in by_kind("Deployment")
                     if d["metadata"]["name"] == "dicomweb-gateway"]
    return deployment


def configmap() -> dict[str, str]:
    (config,) = by_kind("ConfigMap")
    data: dict[str, str] = config["data"]
    return data


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_a_valid_kubernetes_object(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"}


def test_the_configmap_sets_real_settings_that_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    data = configmap()
    fields = {f"DWG_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    for key in list(os.environ):
        if key.startswith("DWG_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.cache_backend == "redis"  # replicas share one cache and the C-MOVE relay
    assert settings.storage_scp_wanted and settings.storage_scp_reuse_port
    redis_service = next(d for d in by_kind("Service")
                         if d["metadata"]["name"] == "dicomweb-gateway-redis")
    assert redis_service["metadata"]["name"] in (settings.redis_url or "")


def test_probes_and_services_point_at_the_containers_ports() -> None:
    deployment = gateway_deployment()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dicom-scp"] == int(configmap()["DWG_STORAGE_SCP_PORT"])
    assert container["args"][-2:] == ["--port", str(ports["http"])]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind("Service"):
        if not service["metadata"]["name"].startswith("dicomweb-gateway-redis"):
            assert service["spec"]["selector"].items() <= labels.items()
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports


def test_every_container_asks_for_cpu_and_memory() -> None:
    for deployment in by_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= requests.keys(), container["name"]
            assert "memory" in container["resources"]["limits"]


def test_a_misspelt_field_would_be_refused() -> None:
    """The check is strict: what it passes is not merely YAML."""
    broken = gateway_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
