"""The operator's adapter to the Kubernetes API: read Jobs and pods, create and delete objects.

It is the only module that talks to the API server (through the official client), and it
translates what it reads into `JobView`s: the Job's state plus the termination message the
phase left in its pod, which is how plan hands its batch count and finalize its summary to
the operator. Objects are read as plain JSON dictionaries (camelCase, as in manifests).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from metatide.operator.names import LABEL_RESOURCE, LABEL_RUN
from metatide.operator.reconcile import JobView

_JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class Kube:
    """Typed access to the few API calls the operator makes."""

    def __init__(self) -> None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self._api = client.ApiClient()
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)

    def _plain(self, value: Any) -> Any:
        return self._api.sanitize_for_serialization(value)  # type: ignore[no-untyped-call]

    def job(self, namespace: str, name: str) -> JobView:
        """The state of a Job, with its pods' termination messages when it has ended."""
        try:
            job = self._plain(self._batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return JobView()
            raise
        status = job.get("status", {})
        found = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
        view = JobView(
            exists=True,
            complete="Complete" in found,
            failed="Failed" in found,
            active=status.get("active", 0),
            succeeded=status.get("succeeded", 0),
            failed_pods=status.get("failed", 0),
            failed_indexes=status.get("failedIndexes", ""),
        )
        if view.complete:
            return replace(view, result=self._message(namespace, name, "Succeeded"))
        if view.failed:
            condition = found["Failed"]
            reason = f"{condition.get('reason')}: {condition.get('message')}"
            pod = self._message(namespace, name, "Failed")
            return replace(view, failure=f"{pod} ({reason})" if pod else reason)
        return view

    def _message(self, namespace: str, job: str, phase: str) -> str | None:
        """The termination message of the newest pod of a Job in the given phase."""
        pods = self._plain(
            self._core.list_namespaced_pod(namespace, label_selector=f"{_JOB_NAME_LABEL}={job}")
        )["items"]
        matching = sorted(
            (pod for pod in pods if pod.get("status", {}).get("phase") == phase),
            key=lambda pod: pod["metadata"]["creationTimestamp"],
        )
        for pod in reversed(matching):
            for container in pod["status"].get("containerStatuses", []):
                terminated = container.get("state", {}).get("terminated")
                if terminated and terminated.get("message"):
                    return str(terminated["message"]).strip()
                if terminated and phase == "Failed":
                    return f"exit code {terminated.get('exitCode')} ({terminated.get('reason')})"
        return None

    def create(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Create an object; one that exists already (a resumed step) is fine."""
        try:
            # The client accepts plain manifests; its stubs only name the model classes.
            if manifest["kind"] == "Job":
                self._batch.create_namespaced_job(namespace, manifest)  # type: ignore[arg-type]
            else:
                self._core.create_namespaced_config_map(namespace, manifest)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = self._batch.list_namespaced_job(namespace, label_selector=selector)
        items: list[dict[str, Any]] = self._plain(listed)["items"]
        return items

    def stop_run(self, namespace: str, resource: str, run_id: str) -> None:
        """Delete a run's Jobs and their pods (its ConfigMap goes with the resource)."""
        for job in self._jobs(namespace, f"{LABEL_RESOURCE}={resource},{LABEL_RUN}={run_id}"):
            self._delete_job(namespace, job["metadata"]["name"])

    def stop_strays(self, namespace: str, resource: str, current: str | None) -> list[str]:
        """Delete active Jobs of this resource that belong to no current run; returns names."""
        stopped = []
        for job in self._jobs(namespace, f"{LABEL_RESOURCE}={resource}"):
            run = job["metadata"].get("labels", {}).get(LABEL_RUN)
            if run != current and job.get("status", {}).get("active", 0) > 0:
                self._delete_job(namespace, job["metadata"]["name"])
                stopped.append(str(job["metadata"]["name"]))
        return stopped

    def _delete_job(self, namespace: str, name: str) -> None:
        try:
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
