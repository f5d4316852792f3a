"""The operational side of deploy/ agrees with the code: the image holds every module the package
installs (the CLI included), the worker's metrics port is the same everywhere, Prometheus is
pointed at both processes, the Temporal cluster's Helm values use PostgreSQL with the same
versions as compose, and Kubernetes registers the search attributes the workflows set.

Static: no Docker engine or cluster here.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import yaml

import devstack
from config import Settings
from tests.test_deploy_static import (
    DEPLOY,
    ROOT,
    compose,
    dockerfile_instructions,
    k8s_containers,
    k8s_object,
)

HELM_VALUES = DEPLOY / "helm" / "temporal-values.yaml"
METRICS_PORT = 9464


def helm_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(HELM_VALUES.read_text())
    return values


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def copied_paths() -> set[str]:
    paths: set[str] = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            *sources, _destination = arguments.split()
            paths |= {source.rstrip("/") for source in sources}
    return paths


def test_the_image_copies_every_module_and_package_the_project_installs() -> None:
    """`pip install .` in the image fails on a py-module that was not copied (cli.py, …)."""
    tool = pyproject()["tool"]["setuptools"]
    modules = {f"{name}.py" for name in tool["py-modules"]}
    packages = {pattern.rstrip("*") for pattern in tool["packages"]["find"]["include"]}
    copied = copied_paths()
    assert modules <= copied, sorted(modules - copied)
    assert packages <= copied, sorted(packages - copied)
    allowed = {
        line.lstrip("!").rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed, f"the .dockerignore leaves out {sorted(copied - allowed)}"


def test_the_ops_cli_is_a_console_script() -> None:
    assert pyproject()["project"]["scripts"]["partnerflow"] == "cli:main"


def test_worker_metrics_port_agrees_everywhere() -> None:
    assert Settings.model_fields["worker_metrics_port"].default == METRICS_PORT
    assert ("EXPOSE", str(METRICS_PORT)) in dockerfile_instructions()

    worker = compose()["services"]["worker"]
    assert worker["environment"]["PARTNERFLOW_WORKER_METRICS_PORT"] == str(METRICS_PORT)
    assert [str(p).rsplit(":", 1)[1] for p in worker["ports"]] == [str(METRICS_PORT)]
    assert f"127.0.0.1:{METRICS_PORT}/metrics" in " ".join(worker["healthcheck"]["test"])

    config = k8s_object("ConfigMap", "partnerflow-config")["data"]
    assert config["PARTNERFLOW_WORKER_METRICS_PORT"] == str(METRICS_PORT)
    ((_, container),) = [c for c in k8s_containers("Deployment") if c[0] == "partnerflow-worker"]
    assert [p["containerPort"] for p in container["ports"]] == [METRICS_PORT]
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": METRICS_PORT}


def test_prometheus_scrapes_both_processes_where_they_serve_metrics() -> None:
    for deployment, port in (("partnerflow-api", 8000), ("partnerflow-worker", METRICS_PORT)):
        pod = k8s_object("Deployment", deployment)["spec"]["template"]["metadata"]
        assert pod["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }, deployment


def test_helm_values_run_temporal_on_postgresql_without_bundled_stores() -> None:
    values = helm_values()
    persistence = values["server"]["config"]["persistence"]
    for store in ("default", "visibility"):
        assert persistence[store]["driver"] == "sql"
        assert persistence[store]["sql"]["driver"].startswith("postgres")
        assert persistence[store]["sql"]["existingSecret"], "no password in the values file"
    shards = values["server"]["config"]["numHistoryShards"]
    assert isinstance(shards, int) and shards >= 4 and math.log2(shards).is_integer()
    for bundled in ("cassandra", "mysql", "postgresql", "elasticsearch", "prometheus", "grafana"):
        assert values[bundled]["enabled"] is False, bundled
    assert values["web"]["enabled"] is True
    namespaces = [n["name"] for n in values["server"]["config"]["namespaces"]["namespace"]]
    config = k8s_object("ConfigMap", "partnerflow-config")["data"]
    assert config["PARTNERFLOW_TEMPORAL_NAMESPACE"] in namespaces
    # Release "temporal" in namespace "temporal" is the frontend our ConfigMap points at.
    assert config["PARTNERFLOW_TEMPORAL_ADDRESS"].startswith("temporal-frontend.temporal.svc")
    assert "helm install temporal temporal/temporal -n temporal" in HELM_VALUES.read_text()


def test_helm_values_pin_the_versions_compose_runs() -> None:
    values = helm_values()
    services = compose()["services"]

    def image(part: dict[str, Any]) -> str:
        tag = str(part["image"]["tag"])
        assert tag and tag != "latest"
        return f"{part['image']['repository']}:{tag}"

    server_tag = image(values["server"]).rpartition(":")[2]
    assert services["temporal"]["image"] == f"temporalio/auto-setup:{server_tag}"
    assert image(values["admintools"]) == services["temporal-admin-tools"]["image"]
    assert image(values["web"]) == services["temporal-ui"]["image"]


def test_kubernetes_registers_every_search_attribute_against_our_frontend() -> None:
    job = k8s_object("Job", "partnerflow-search-attributes")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == compose()["services"]["temporal-admin-tools"]["image"]
    script = container["args"][0]
    for name, kind in devstack.SEARCH_ATTRIBUTES.items():
        assert f"{name}={kind}" in script
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {
        "TEMPORAL_ADDRESS": "$(PARTNERFLOW_TEMPORAL_ADDRESS)",
        "TEMPORAL_NAMESPACE": "$(PARTNERFLOW_TEMPORAL_NAMESPACE)",
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "partnerflow-config"}}]


def test_deploy_docs_explain_scaling_out() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for topic in ("API replicas", "task queue", "history shards", "numHistoryShards", "database"):
        assert topic in text, topic
    assert Path(HELM_VALUES).exists()


def test_stuck_executions_are_flagged_the_same_way_everywhere() -> None:
    """The threshold behind TemporalReportedProblems (the stuck-executions query)."""
    assert "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute" in (
        devstack.DYNAMIC_CONFIG
    )
    # and every other server setting (history.maxInFlightUpdates, issue 11) the same way too
    compose_file = yaml.safe_load((DEPLOY / "temporal-dynamicconfig.yaml").read_text())
    command = devstack.temporal_dev_server_command(Settings(), None)
    for key, value in devstack.DYNAMIC_CONFIG.items():
        assert compose_file[key] == [{"value": int(value)}], key
        assert helm_values()["server"]["dynamicConfig"][key] == [{"value": int(value)}], key
        assert f"{key}={value}" in command
    assert set(compose_file) == set(devstack.DYNAMIC_CONFIG)
    assert set(helm_values()["server"]["dynamicConfig"]) == set(devstack.DYNAMIC_CONFIG)
    temporal = compose()["services"]["temporal"]
    (mount,) = temporal["volumes"]
    assert mount.startswith("./temporal-dynamicconfig.yaml:/etc/temporal/")
    assert mount.split(":")[1].endswith(temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"])
