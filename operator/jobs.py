"""Manifests of a run's objects: the frozen spec ConfigMap and the three phase Jobs.

Pure functions from the resource and the run to dictionaries the Kubernetes API accepts, so
tests can check every field without a cluster. Each Job's pod gets the spec from the run's
ConfigMap (frozen at the run's start), the run id, and each referenced secret from its
Secret key, under the environment variable the spec names.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final, Literal

from metatide.extractor.core.documents import CurrentRun
from metatide.extractor.core.errors import EXIT_TERMINAL
from metatide.operator.model import GROUP, KIND, VERSION, IncrementalExtractionSpec
from metatide.operator.names import Phase, labels, object_name

SPEC_KEY: Final = "spec.json"
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


IMAGE_REPOSITORY: Final = "ghcr.io/metatide/metatide"


def default_image() -> str:
    """The published image of this metatide version (what the chart installs by default)."""
    return f"{IMAGE_REPOSITORY}:{version('metatide')}"


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """The image of phase Jobs when a resource names none: the operator's own (from the chart's
    image values), so upgrading the chart upgrades the extractor with the operator."""

    image: str
    image_pull_policy: PullPolicy = "IfNotPresent"

    def for_spec(self, spec: IncrementalExtractionSpec) -> tuple[str, PullPolicy]:
        """The image and pull policy of a run of this resource (fixed at the run's start)."""
        job = spec.job
        if job.image is None:
            return self.image, job.image_pull_policy or self.image_pull_policy
        return job.image, job.image_pull_policy or "IfNotPresent"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """Makes the garbage collector delete run objects with their resource."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    name: str, resource: str, uid: str, run_id: str, phase: Phase | None
) -> dict[str, Any]:
    return {
        "name": name,
        "labels": labels(resource, run_id, phase),
        "ownerReferences": [owner_reference(resource, uid)],
    }


def spec_config_map(
    resource: str, uid: str, run_id: str, spec: IncrementalExtractionSpec
) -> dict[str, Any]:
    """The run's frozen spec: editing the resource mid-run does not change a running run."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(object_name(resource, run_id, "spec"), resource, uid, run_id, None),
        "data": {SPEC_KEY: spec.extraction().to_json()},
        "immutable": True,
    }


def _environment(
    resource: str, run_id: str, spec: IncrementalExtractionSpec
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": "METATIDE_SPEC",
            "valueFrom": {
                "configMapKeyRef": {"name": object_name(resource, run_id, "spec"), "key": SPEC_KEY}
            },
        },
        {"name": "METATIDE_RUN_ID", "value": run_id},
        {"name": "METATIDE_LOG_FORMAT", "value": "json"},
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108 - an emptyDir, see volumes
    ]
    env += [{"name": name, "value": value} for name, value in sorted(spec.job.env.items())]
    for ref in spec.secret_refs():
        if ref.secret_key_ref is not None:
            env.append(
                {
                    "name": ref.env,
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": ref.secret_key_ref.name,
                            "key": ref.secret_key_ref.key,
                        }
                    },
                }
            )
    return env


def _pod_template(
    resource: str,
    run: CurrentRun,
    phase: Phase,
    spec: IncrementalExtractionSpec,
    args: list[str],
) -> dict[str, Any]:
    job = spec.job
    pod: dict[str, Any] = {
        "metadata": {"labels": labels(resource, run.id, phase)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": phase,
                    "image": run.image,
                    "imagePullPolicy": run.image_pull_policy or "IfNotPresent",
                    "command": ["metatide"],
                    "args": args,
                    "env": _environment(resource, run.id, spec),
                    "resources": job.resources.model_dump(),
                    "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    if job.service_account_name is not None:  # else the namespace's default ServiceAccount
        pod["spec"]["serviceAccountName"] = job.service_account_name
    return pod


def _on_terminal_exit(action: str) -> dict[str, Any]:
    """A podFailurePolicy rule: the extractor's terminal exit code means retrying cannot help."""
    return {"action": action, "onExitCodes": {"operator": "In", "values": [EXIT_TERMINAL]}}


_IGNORE_DISRUPTIONS: Final = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def phase_job(
    resource: str, uid: str, run: CurrentRun, phase: Phase, spec: IncrementalExtractionSpec
) -> dict[str, Any]:
    """The Job of one phase; columns is an Indexed Job with one index per batch."""
    args: list[str] = [phase]
    if phase == "plan" and run.take_over_from:
        args += ["--take-over-from", run.take_over_from]
    job = spec.job
    batches = run.batches.total
    body: dict[str, Any] = {
        "backoffLimit": job.backoff_limit,
        "activeDeadlineSeconds": job.active_deadline_seconds,
        "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
        "template": _pod_template(resource, run, phase, spec, args),
        "podFailurePolicy": {"rules": [_on_terminal_exit("FailJob"), _IGNORE_DISRUPTIONS]},
    }
    if phase == "columns":
        body.update(
            {
                "completionMode": "Indexed",
                "completions": batches,
                "parallelism": min(spec.columns.parallelism, batches),
                "backoffLimitPerIndex": job.backoff_limit_per_index,
                "podFailurePolicy": {
                    "rules": [_on_terminal_exit("FailIndex"), _IGNORE_DISRUPTIONS]
                },
            }
        )
        body.pop("backoffLimit")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(object_name(resource, run.id, phase), resource, uid, run.id, phase),
        "spec": body,
    }
