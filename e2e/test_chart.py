"""The Helm chart: lints, renders, and grants exactly the least privilege the operator needs.

Runs the real `helm` (built by `e2e/cluster build`, or by this module's fixture when missing)
and inspects what `helm template` renders: the operator Deployment's command and hardening, the
RBAC rules in both watch modes (all namespaces: one ClusterRole; listed namespaces: a Role per
namespace), the Job ServiceAccount without a token or any binding, the metrics Service, and the
CRD, which must be the repository's generated file. A helm that cannot be built fails the
tests: they never skip.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from localkube.build import BuildError, build_helm
from localkube.settings import HELM_VERSION, layout

from metatide.operator import crd

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "metatide"
CHART_CRD_COPY = CHART / "files" / f"{crd.CRD_NAME}.yaml"
RELEASE = "metatide"
NAMESPACE = "metatide-system"
# The chart requires Kubernetes >= 1.30; helm built without version ldflags assumes v1.20.
KUBE_VERSION = "1.36.3"

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def _rules(*grants: tuple[str, str, str]) -> set[Rule]:
    return {(group, resource, verb) for group, resource, verbs in grants for verb in verbs.split()}


NAMESPACED_RULES = _rules(
    ("metatide.dev", "incrementalextractions", "get list watch patch"),
    ("metatide.dev", "incrementalextractions/status", "patch"),
    ("", "events", "create list"),
    ("batch", "jobs", "create get list watch delete"),
    ("", "configmaps", "create get"),
    ("", "pods", "list"),
)
CRD_RULES = _rules(("apiextensions.k8s.io", "customresourcedefinitions", "get list watch"))
NAMESPACE_OBSERVER_RULES = _rules(("", "namespaces", "list watch"))


@pytest.fixture(scope="module")
def helm() -> Path:
    """The harness's helm, built here from the Go module proxy if ``e2e/cluster build`` has not."""
    where = layout()
    if not where.helm.is_file():
        log = where.cache / "build.log"
        print(f"building helm {HELM_VERSION} for the chart tests (log {log})", file=sys.stderr)
        try:
            build_helm(where, log)
        except BuildError as exc:
            pytest.fail(f"helm could not be built: {exc}", pytrace=False)
    return where.helm


def run_helm(helm: Path, *args: str) -> str:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def render(helm: Path, *values: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` values, as parsed documents."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(run_helm(helm, *args)) if doc]


def of_kind(documents: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    (document,) = of_kind(documents, kind)
    return document


def granted(role: dict[str, Any]) -> set[Rule]:
    found: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames etc.
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    found.add((group, resource, verb))
    return found


@pytest.fixture(scope="module")
def default_render(helm: Path) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def namespaced_render(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "watchNamespaces={shop,sales}", "jobServiceAccount.create=true")


def test_the_job_image_follows_the_chart_image(helm: Path) -> None:
    values = ("image.repository=registry.example/metatide", "image.tag=2.0.0")
    deployment = one(render(helm, *values, "image.pullPolicy=Always"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["METATIDE_JOB_IMAGE"] == "registry.example/metatide:2.0.0"
    assert env["METATIDE_JOB_IMAGE_PULL_POLICY"] == "Always"


def test_by_default_no_job_service_account_is_needed(
    default_render: list[dict[str, Any]],
) -> None:
    # Job pods run as their namespace's default ServiceAccount unless a resource names one.
    names = {sa["metadata"]["name"] for sa in of_kind(default_render, "ServiceAccount")}
    assert names == {RELEASE}


@pytest.mark.parametrize(
    "values", [[], ["watchNamespaces={shop,sales}"], ["metrics.serviceMonitor.enabled=true"]]
)
def test_helm_lint(helm: Path, values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    output = run_helm(helm, *args)
    assert "0 chart(s) failed" in output


def test_deployment_runs_the_operator_hardened(default_render: list[dict[str, Any]]) -> None:
    deployment = one(default_render, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # standalone kopf: never two
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [*container["command"], *container["args"]][:2] == ["metatide", "operator"]
    assert "--metrics-port=8080" in container["args"]
    assert not any(arg.startswith("--namespace") for arg in container["args"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["METATIDE_LOG_FORMAT"] == "json"
    assert env["TMPDIR"] == "/tmp"
    # Phase Jobs run the chart's image unless a resource names one: helm upgrade upgrades both.
    assert env["METATIDE_JOB_IMAGE"] == container["image"]
    assert env["METATIDE_JOB_IMAGE_PULL_POLICY"] == container["imagePullPolicy"]
    assert "--resync-seconds=300" in container["args"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["image"] == "ghcr.io/metatide/metatide:0.1.0"
    operator_account = one(
        [
            sa
            for sa in of_kind(default_render, "ServiceAccount")
            if sa["metadata"]["name"] == RELEASE
        ],
        "ServiceAccount",
    )
    assert pod["serviceAccountName"] == operator_account["metadata"]["name"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"healthz": 8081, "http-metrics": 8080}
    # kopf's liveness endpoint, which metatide.operator.main always serves on 8081.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert "--health-port=8081" in container["args"], (
        "the chart must tell `metatide operator` where to serve /healthz"
    )


def test_all_namespaces_rbac_is_least_privilege(default_render: list[dict[str, Any]]) -> None:
    assert not of_kind(default_render, "Role")
    assert not of_kind(default_render, "RoleBinding")
    role = one(default_render, "ClusterRole")
    assert granted(role) == NAMESPACED_RULES | CRD_RULES
    binding = one(default_render, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]


def test_listed_namespaces_get_roles(namespaced_render: list[dict[str, Any]]) -> None:
    deployment = one(namespaced_render, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=shop",
        "--namespace=sales",
    ]
    cluster_role = one(namespaced_render, "ClusterRole")
    # kopf observes namespaces when it watches a list of them (and only then).
    assert granted(cluster_role) == CRD_RULES | NAMESPACE_OBSERVER_RULES
    roles = {role["metadata"]["namespace"]: role for role in of_kind(namespaced_render, "Role")}
    assert set(roles) == {"shop", "sales"}
    for role in roles.values():
        assert granted(role) == NAMESPACED_RULES
    bindings = of_kind(namespaced_render, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"shop", "sales"}
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize("mode", ["default_render", "namespaced_render"])
def test_no_wildcards(mode: str, request: pytest.FixtureRequest) -> None:
    documents = request.getfixturevalue(mode)
    for role in of_kind(documents, "ClusterRole") + of_kind(documents, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"], rule)


def test_job_service_account_has_no_token_and_no_rbac(
    namespaced_render: list[dict[str, Any]],
) -> None:
    documents, namespaces = namespaced_render, {NAMESPACE, "shop", "sales"}
    job_accounts = [
        sa
        for sa in of_kind(documents, "ServiceAccount")
        if sa["metadata"]["name"] == "metatide-job"
    ]
    assert {sa["metadata"]["namespace"] for sa in job_accounts} == namespaces
    for account in job_accounts:
        assert account["automountServiceAccountToken"] is False
    for binding in of_kind(documents, "RoleBinding") + of_kind(documents, "ClusterRoleBinding"):
        assert all(s["name"] != "metatide-job" for s in binding["subjects"]), binding


def test_crd_is_the_generated_one(default_render: list[dict[str, Any]]) -> None:
    assert CHART_CRD_COPY.read_text(encoding="utf-8") == crd.render_yaml(), (
        f"{CHART_CRD_COPY.relative_to(REPO)} differs from the generated CRD; run "
        f"`{crd.REGENERATE_COMMAND} && cp {crd.CRD_FILE} {CHART_CRD_COPY.relative_to(REPO)}`"
    )
    rendered = one(default_render, "CustomResourceDefinition")
    committed = yaml.safe_load((REPO / crd.CRD_FILE).read_text(encoding="utf-8"))
    assert rendered["spec"] == committed["spec"]
    assert rendered["metadata"]["name"] == committed["metadata"]["name"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert committed["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


def test_crd_can_be_left_out(helm: Path) -> None:
    assert not of_kind(render(helm, "installCRDs=false"), "CustomResourceDefinition")


def test_metrics_service_and_monitor(helm: Path, default_render: list[dict[str, Any]]) -> None:
    service = one(default_render, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    pod_labels = one(default_render, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not of_kind(default_render, "ServiceMonitor")
    monitor = one(render(helm, "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    without = render(helm, "metrics.enabled=false")
    assert not of_kind(without, "Service")
    assert not of_kind(without, "ServiceMonitor")
