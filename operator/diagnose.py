"""Why a run's Job cannot start or make progress, from what Kubernetes says about it.

A Job whose pods cannot be created (a missing ServiceAccount, a quota, an admission webhook)
has no pods: the Job controller reports it only as a ``FailedCreate`` Warning event on the
Job. A pod that was created but cannot run says so in its status: an image that cannot be
pulled, a Secret or ConfigMap key that does not exist, no node that fits. These functions turn
either into a `JobProblem` with Kubernetes' own reason and message; the operator looks only
when a Job has had no ready pod for a few seconds, so a healthy run costs nothing.
"""

from __future__ import annotations

from typing import Any, Final

from metatide.extractor.core.documents import JobProblem

WAITING_PROBLEMS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Container waiting reasons that do not go away by waiting."""


def pod_problem(job: str, pods: list[dict[str, Any]]) -> JobProblem | None:
    """The problem of the newest pod that has one: a container stuck waiting for a reason
    above, or a pod no node can take."""
    for pod in reversed(pods):
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for container in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_PROBLEMS:
                message = waiting.get("message") or waiting["reason"]
                return JobProblem(
                    job=job, reason=waiting["reason"], message=f"pod {name}: {message}"
                )
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                message = condition.get("message") or "no node can run it"
                return JobProblem(job=job, reason="Unschedulable", message=f"pod {name}: {message}")
    return None


def event_problem(job: str, events: list[dict[str, Any]]) -> JobProblem | None:
    """The newest Warning event of the Job (FailedCreate: forbidden, quota exceeded...)."""
    for event in reversed(events):
        if event.get("type") == "Warning" and event.get("reason"):
            return JobProblem(
                job=job, reason=str(event["reason"]), message=str(event.get("message") or "")
            )
    return None


def termination_message(pods: list[dict[str, Any]], phase: str) -> str | None:
    """The termination message of the newest pod in `phase` (Succeeded or Failed): the result
    line a phase leaves, or for a failed pod its error (else its exit code)."""
    for pod in reversed(pods):
        status = pod.get("status") or {}
        if status.get("phase") != phase:
            continue
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated and terminated.get("message"):
                return str(terminated["message"]).strip()
            if terminated and phase == "Failed":
                return f"exit code {terminated.get('exitCode')} ({terminated.get('reason')})"
    return None
