"""The deploy files agree with the code: pinned images, real settings names, one API port, a
non-root image, and the same custom search attributes everywhere Temporal is started."""

from __future__ import annotations

import itertools
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from temporalio.common import SearchAttributeKey

import devstack
import domain.search_attributes
from config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
API_PORT = 8000


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def k8s_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in K8S_FILES
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def k8s_containers(kind: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner name, container) for every pod template in the manifests."""
    for document in k8s_documents():
        if kind is not None and document["kind"] != kind:
            continue
        spec = document.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            yield document["metadata"]["name"], container


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for document in k8s_documents():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "PARTNERFLOW_") -> set[str]:
    """Every variable pydantic-settings reads, nested models included (PARTNERFLOW_POLICY__X)."""
    names = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        names.add(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= settings_env_names(annotation, f"{name}__")
    return names


def cli_type_name(key: SearchAttributeKey[Any]) -> str:
    """KEYWORD_LIST -> KeywordList, as the temporal CLI spells types."""
    return "".join(part.capitalize() for part in key.indexed_value_type.name.split("_"))


# --- images -------------------------------------------------------------------------------------


def all_images() -> list[tuple[str, str]]:
    images = [
        ("Dockerfile", arguments.split()[0])
        for keyword, arguments in dockerfile_instructions()
        if keyword == "FROM"
    ]
    images += [(f"compose {name}", svc["image"]) for name, svc in compose()["services"].items()]
    images += [(f"k8s {owner}", container["image"]) for owner, container in k8s_containers()]
    return images


def test_deploy_files_name_images() -> None:
    sources = {source.split()[0] for source, _ in all_images()}
    assert sources == {"Dockerfile", "compose", "k8s"}


@pytest.mark.parametrize(("source", "image"), all_images())
def test_every_image_is_pinned_to_a_tag(source: str, image: str) -> None:
    assert "$" not in image, f"{source}: {image} is not a fixed name"
    name, _, tag = image.rpartition("/")[2].partition(":")
    assert name and tag, f"{source}: {image} has no tag"
    assert tag != "latest", f"{source}: {image} floats on latest"


def test_base_image_is_a_specific_python_311_slim_release() -> None:
    (base,) = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base


# --- settings -----------------------------------------------------------------------------------


def test_settings_env_names_include_nested_policy() -> None:
    names = settings_env_names()
    assert {"PARTNERFLOW_JWT_SECRET", "PARTNERFLOW_POLICY__PO_REVIEW_SLA"} <= names
    assert "PARTNERFLOW_RATE_LIMIT__BURST" in names


@pytest.mark.parametrize(
    "path", [DOCKERFILE, COMPOSE, DEPLOY / "README.md", *K8S_FILES], ids=lambda p: p.name
)
def test_every_partnerflow_env_name_in_deploy_is_a_setting(path: Path) -> None:
    used = set(re.findall(r"PARTNERFLOW_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    unknown = used - settings_env_names()
    assert not unknown, f"{path.name} sets variables Settings does not read: {sorted(unknown)}"


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_deploy_env_values_are_accepted_by_settings(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as the processes read them (environment, nested `__`): durations and ints parse."""
    if source == "compose":
        env = compose()["services"]["api"]["environment"]
    else:
        env = k8s_object("ConfigMap", "partnerflow-config")["data"]
    for name in [name for name in os.environ if name.startswith("PARTNERFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("PARTNERFLOW_JWT_SECRET", "x" * 48)  # compose interpolates it; k8s Secret

    settings = Settings()

    assert settings.env == "production"
    assert settings.api_port == API_PORT
    assert settings.policy.po_review_sla == env["PARTNERFLOW_POLICY__PO_REVIEW_SLA"]


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`(PARTNERFLOW_[A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    names = settings_env_names()
    # A nested model is documented by its fields (PARTNERFLOW_POLICY__...), not as one JSON value.
    leaves = {name for name in names if not any(n.startswith(f"{name}__") for n in names)}
    assert leaves - documented == set(), "README's settings table misses these"
    assert documented - names == set(), "README documents unknown settings"


# --- image, ports, probes -----------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_api_port_agrees_everywhere() -> None:
    assert Settings.model_fields["api_port"].default == API_PORT

    assert ("EXPOSE", str(API_PORT)) in dockerfile_instructions()
    assert dockerfile_env()["PARTNERFLOW_API_PORT"] == str(API_PORT)

    api = compose()["services"]["api"]
    assert [str(p).rsplit(":", 1)[1] for p in api["ports"]] == [str(API_PORT)]
    assert str(api["environment"]["PARTNERFLOW_API_PORT"]) == str(API_PORT)

    assert k8s_object("ConfigMap", "partnerflow-config")["data"]["PARTNERFLOW_API_PORT"] == str(
        API_PORT
    )
    ((_, container),) = [c for c in k8s_containers("Deployment") if c[0] == "partnerflow-api"]
    assert [p["containerPort"] for p in container["ports"]] == [API_PORT]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": API_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": API_PORT}
    service = k8s_object("Service", "partnerflow-api")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [API_PORT]


def test_k8s_workloads_have_resources_and_an_autoscaler() -> None:
    for owner, container in k8s_containers():
        resources = container.get("resources", {})
        assert resources.get("requests") and resources.get("limits"), owner
    for deployment in ("partnerflow-api", "partnerflow-worker"):
        hpa = k8s_object("HorizontalPodAutoscaler", deployment)
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment
        k8s_object("Deployment", deployment)


def test_worker_runs_from_the_same_image_everywhere() -> None:
    services = compose()["services"]
    assert services["worker"]["image"] == services["api"]["image"]
    assert services["worker"]["command"] == ["python", "worker.py"]
    ((_, worker),) = [c for c in k8s_containers("Deployment") if c[0] == "partnerflow-worker"]
    ((_, api),) = [c for c in k8s_containers("Deployment") if c[0] == "partnerflow-api"]
    assert worker["image"] == api["image"]
    assert worker["command"] == ["python", "worker.py"]


def test_compose_runs_temporal_on_postgresql_and_starts_ours_after_setup() -> None:
    services = compose()["services"]
    expected = {"postgresql", "temporal", "temporal-ui", "temporal-admin-tools", "worker", "api"}
    assert expected <= set(services)
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    for name in ("worker", "api"):
        depends = services[name]["depends_on"]
        assert depends["temporal-admin-tools"]["condition"] == "service_completed_successfully"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


# --- search attributes --------------------------------------------------------------------------


def test_search_attributes_match_the_workflows_keys() -> None:
    keys = [
        value
        for value in vars(domain.search_attributes).values()
        if isinstance(value, SearchAttributeKey)
    ]
    assert {key.name: cli_type_name(key) for key in keys} == devstack.SEARCH_ATTRIBUTES


def test_dev_server_command_registers_every_search_attribute() -> None:
    settings = Settings(temporal_port=17999, ui_port=18999, temporal_namespace="pf-test")
    command = devstack.temporal_dev_server_command(settings, None, ["--headless"])

    assert Path(command[0]).name == "temporal"
    assert command[1:3] == ["server", "start-dev"]
    pairs = list(itertools.pairwise(command))
    for name, kind in devstack.SEARCH_ATTRIBUTES.items():
        assert ("--search-attribute", f"{name}={kind}") in pairs
    assert ("--port", "17999") in pairs
    assert ("--ui-port", "18999") in pairs
    assert ("--namespace", "pf-test") in pairs
    assert "--db-filename" not in command
    assert command[-1] == "--headless"


def test_dev_server_command_persists_to_the_given_file() -> None:
    command = devstack.temporal_dev_server_command(Settings(), "/tmp/pf/temporal.db")
    assert ("--db-filename", "/tmp/pf/temporal.db") in list(itertools.pairwise(command))


def test_deploy_registers_every_search_attribute() -> None:
    script = compose()["services"]["temporal-admin-tools"]["command"][0]
    readme = (DEPLOY / "README.md").read_text()
    for name, kind in devstack.SEARCH_ATTRIBUTES.items():
        assert f"{name}={kind}" in script
        assert f"--name {name} --type {kind}" in readme


# --- Kubernetes schemas and the Temporal chart (issue 12) ---------------------------------------

# The Kubernetes version the manifests are written for; kubernetes-validate bundles its schemas
# (no network). Strict mode: a field the schema does not define is an error, not ignored.
K8S_VERSION = "1.31.0"
HELM_VALUES = DEPLOY / "helm" / "temporal-values.yaml"
CHART_KEYS = Path(__file__).resolve().parent / "fixtures" / "temporal-chart-0.73.2-keys.yaml"


def k8s_manifest_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file:index kind/name, document) for every document of every YAML file under deploy/k8s."""
    files = sorted(
        p for p in (DEPLOY / "k8s").rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file()
    )
    assert files, "no manifests under deploy/k8s"
    return [
        (f"{path.relative_to(DEPLOY)}:{i} {doc['kind']}/{doc['metadata']['name']}", doc)
        for path in files
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


@pytest.mark.parametrize(
    ("where", "document"), k8s_manifest_documents(), ids=[w for w, _ in k8s_manifest_documents()]
)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(
    where: str, document: dict[str, Any]
) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_k8s_schema_validation_rejects_a_misspelt_field() -> None:
    """The validation above can fail: strict mode refuses a field Kubernetes does not know."""
    import kubernetes_validate

    ((_, deployment),) = [
        (w, d) for w, d in k8s_manifest_documents() if w.endswith("Deployment/partnerflow-api")
    ]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def chart_keys() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CHART_KEYS.read_text())
    return document


def values_key_paths(node: Any, free_form: set[str], prefix: str = "") -> list[str]:
    """Dotted paths of every mapping key in `node`, not descending into free-form paths."""
    paths: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            paths.append(path)
            if path not in free_form:
                paths += values_key_paths(value, free_form, f"{path}.")
    return paths


def test_helm_values_use_only_keys_of_the_pinned_chart_version() -> None:
    known = chart_keys()
    free_form = set(known["free_form"])
    used = values_key_paths(yaml.safe_load(HELM_VALUES.read_text()), free_form)
    assert used, "no values"
    unknown = [path for path in used if path not in set(known["keys"]) | free_form]
    assert not unknown, f"not keys of chart {known['version']}: {unknown}"


def test_helm_values_and_docs_name_the_pinned_chart_version() -> None:
    known = chart_keys()
    text = HELM_VALUES.read_text()
    assert f"--version {known['version']}" in text
    assert f"--version {known['version']}" in (DEPLOY / "README.md").read_text()
    # the server image is the release that chart version ships
    values = yaml.safe_load(text)
    assert values["server"]["image"]["tag"] == known["app_version"]
    assert values["admintools"]["image"]["tag"].startswith(f"{known['app_version']}-")


def test_helm_key_check_can_fail() -> None:
    known = chart_keys()
    used = values_key_paths({"server": {"frontnd": {"replicaCount": 2}}}, set(known["free_form"]))
    assert [path for path in used if path not in set(known["keys"])] == [
        "server.frontnd",
        "server.frontnd.replicaCount",
    ]


def test_image_compiles_every_source_it_copies() -> None:
    """Issue 11: the image runs the sources in /app, not pip's compiled copy; the workflow
    sandbox re-imports a workflow module per run, so each copied source has its bytecode built
    into the image (before USER: /app is not the runtime user's to write)."""
    instructions = dockerfile_instructions()
    copied: set[str] = set()
    for keyword, arguments in instructions:
        if keyword == "COPY":
            *sources, _ = arguments.split()
            copied |= {s.rstrip("/") for s in sources if s.endswith(".py") or "." not in s}
    compiles = [i for i, (k, a) in enumerate(instructions) if k == "RUN" and "compileall" in a]
    assert compiles, "the Dockerfile does not compile the sources it copies"
    compiled = set(instructions[compiles[-1]][1].split())
    assert {"workflows", "worker.py"} <= copied
    assert copied - compiled == set(), "copied but not compiled into the image"
    last_copy = max(i for i, (k, _) in enumerate(instructions) if k == "COPY")
    user = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert last_copy < compiles[-1] < user
