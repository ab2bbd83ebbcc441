"""The operator's adapter to the Kubernetes API: every request, and every API error, in one place.

It is the only module that calls the API server (kopf's watch streams aside). Requests go
through the official client's connection handling (in-cluster or kubeconfig credentials, TLS,
token refresh) as plain JSON: no generated model classes on the hot path. Errors are
translated here, once, into the operator's exception tree (like the engine's source and store
adapters do for their drivers):

    KubeError                          (a MetatideError)
    ├── KubeUnavailableError           retryable: throttled (429), server errors (5xx), network;
    │                                  retried here with backoff (Retry-After honoured) first
    ├── KubeConflictError              retryable: the object changed since it was read (409)
    └── KubeRefusedError               terminal: forbidden (RBAC), invalid (422), bad request;
                                       the resource shows it as Stalled with the API's message

A 404 is an answer, not an error (`None`), and creating an object that exists returns the
existing one: run objects have deterministic names, so a resumed step finds its own work.
Every request is counted by verb, resource and code in ``metatide_operator_api_requests_total``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config
from prometheus_client import Counter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from metatide.extractor.core.errors import MetatideError, RetryableError, TerminalError
from metatide.operator.model import GROUP, KIND, PLURAL, VERSION
from metatide.operator.names import LABEL_PHASE, LABEL_RESOURCE, LABEL_RUN

JSON = dict[str, Any]
Verb = Literal["get", "list", "create", "patch", "delete"]

JOB_NAME_LABEL: Final = "batch.kubernetes.io/job-name"
COMPONENT: Final = "metatide-operator"
_ATTEMPTS: Final = 4
_TIMEOUT: Final = urllib3.Timeout(connect=5.0, read=30.0)

API_REQUESTS = Counter(
    "metatide_operator_api_requests_total",
    "Kubernetes API requests the operator made (watch streams aside), by verb, resource and "
    "HTTP status code (0: no response).",
    ["verb", "resource", "code"],
)


class KubeError(MetatideError):
    """A Kubernetes API request failed; `reason` and `message` are the API's own words."""

    def __init__(self, what: str, code: int, reason: str, message: str) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        super().__init__(f"{what}: {reason} ({code}): {message}")


class KubeUnavailableError(KubeError, RetryableError):
    """The API server is throttling, failing or unreachable: try again later."""

    def __init__(self, what: str, code: int, reason: str, message: str, retry_after: float = 0):
        self.retry_after = retry_after
        super().__init__(what, code, reason, message)


class KubeConflictError(KubeError, RetryableError):
    """The object changed since it was read: read it again and redo the decision."""


class KubeRefusedError(KubeError, TerminalError):
    """The API refused the request (forbidden, invalid): a person must change something."""


def _retry_wait(state: RetryCallState) -> float:
    """Exponential backoff, or the server's Retry-After when it asks for longer."""
    backoff = wait_exponential(multiplier=0.2, max=5)(state)
    error = state.outcome.exception() if state.outcome else None
    asked = error.retry_after if isinstance(error, KubeUnavailableError) else 0
    return max(backoff, min(asked, 30.0))


def _error(what: str, code: int, body: bytes, headers: Any) -> KubeError:
    """The operator's error for an API response that is not a success."""
    try:
        status = json.loads(body)
    except ValueError:
        status = {}
    status = status if isinstance(status, dict) else {}
    reason = str(status.get("reason") or ("Unknown" if code else "Unreachable"))
    message = str(status.get("message") or body[:300].decode(errors="replace") or "no message")
    if code == 409 and reason == "Conflict":
        return KubeConflictError(what, code, reason, message)
    if code == 429 or code >= 500 or code == 0:
        retry_after = float((headers or {}).get("Retry-After", 0) or 0)
        return KubeUnavailableError(what, code, reason, message, retry_after)
    return KubeRefusedError(what, code, reason, message)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the operator keeps of one phase Job: its identity and its status counts."""

    name: str
    uid: str
    resource_version: str
    resource: str
    run: str
    phase: str
    created_at: datetime
    active: int
    ready: int
    succeeded: int
    failed_indexes: str
    complete: bool
    failed: bool
    failure: str
    """The Failed condition's reason and message, when the Job failed."""

    @classmethod
    def of(cls, job: JSON) -> JobRecord:
        """The record of a Job as the API returns it."""
        meta, status = job["metadata"], job.get("status") or {}
        labels = meta.get("labels") or {}
        true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = true.get("Failed") or {}
        return cls(
            name=meta["name"],
            uid=meta.get("uid", ""),
            resource_version=meta.get("resourceVersion", ""),
            resource=labels.get(LABEL_RESOURCE, ""),
            run=labels.get(LABEL_RUN, ""),
            phase=labels.get(LABEL_PHASE, ""),
            created_at=parse_time(meta.get("creationTimestamp")),
            active=int(status.get("active") or 0),
            ready=int(status.get("ready") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed_indexes=str(status.get("failedIndexes") or ""),
            complete="Complete" in true,
            failed=bool(failed),
            failure=f"{failed.get('reason')}: {failed.get('message')}" if failed else "",
        )


def parse_time(text: str | None) -> datetime:
    """A Kubernetes timestamp; the epoch when absent."""
    if not text:
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def owner_of(job: JSON) -> str | None:
    """The IncrementalExtraction a Job belongs to (its controller owner reference)."""
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


class Kube:
    """The few API calls the operator makes, as plain JSON, with errors mapped once."""

    def __init__(self, api: client.ApiClient | None = None, connections: int = 0) -> None:
        """`connections`: requests made at the same time (the controller's workers); the
        pool keeps at least that many connections open, else each request over the default
        size (5 per CPU) would open a new TLS connection and throw it away."""
        if api is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = max(
                configuration.connection_pool_maxsize, connections
            )
            api = client.ApiClient(configuration)
        self._api = api
        self._host = socket.gethostname()

    # -- the one request path ------------------------------------------------------------

    def _request(
        self,
        verb: Verb,
        resource: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JSON | None:
        """One API call, retried on throttling and server errors; None on 404."""
        method = {"get": "GET", "list": "GET", "create": "POST", "patch": "PATCH"}.get(
            verb, "DELETE"
        )
        what = f"{verb} {path}"
        retrying = Retrying(
            retry=retry_if_exception_type(KubeUnavailableError),
            stop=stop_after_attempt(_ATTEMPTS),
            wait=_retry_wait,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(verb, resource, method, what, path, query, body, content_type)
        raise AssertionError("tenacity stops by raising the last error")  # pragma: no cover

    def _once(
        self,
        verb: Verb,
        resource: str,
        method: str,
        what: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str,
    ) -> JSON | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, _, _ = self._api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        if query:
            url += "?" + urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        code = 0
        try:
            with _translated(what):
                response = self._api.rest_client.pool_manager.request(
                    method, url, headers=headers, body=data, timeout=_TIMEOUT, retries=False
                )
            code = response.status
        finally:
            API_REQUESTS.labels(verb, resource, str(code)).inc()
        if code == 404 and verb in ("get", "delete"):
            return None
        if not 200 <= code < 300:
            raise _error(what, code, response.data, response.headers)
        parsed: JSON = json.loads(response.data) if response.data else {}
        return parsed

    # -- IncrementalExtractions ---------------------------------------------------------

    @staticmethod
    def _resource_path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

    def read_resource(self, namespace: str, name: str) -> JSON | None:
        """An IncrementalExtraction as stored now (after a conflict), or None if it is gone."""
        return self._request("get", PLURAL, self._resource_path(namespace, name))

    def patch_status(
        self, namespace: str, name: str, status_patch: JSON, resource_version: str
    ) -> JSON:
        """A merge patch of the status, only if the resource is still at `resource_version`
        (KubeConflictError otherwise); returns the updated resource."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        updated = self._request(
            "patch",
            f"{PLURAL}/status",
            self._resource_path(namespace, name) + "/status",
            body=body,
            content_type="application/merge-patch+json",
        )
        if updated is None:  # pragma: no cover - a PATCH never answers 404 with None here
            raise KubeConflictError(f"patch {name}", 404, "NotFound", "the resource is gone")
        return updated

    # -- run objects ----------------------------------------------------------------------

    def create(self, namespace: str, manifest: JSON) -> tuple[JSON, bool]:
        """Create a Job or ConfigMap; returns the object and whether this call created it (an
        existing one, from a resumed step, is read and returned)."""
        kind = manifest["kind"]
        plural, prefix = ("jobs", "/apis/batch/v1") if kind == "Job" else ("configmaps", "/api/v1")
        collection = f"{prefix}/namespaces/{namespace}/{plural}"
        try:
            created = self._request("create", plural, collection, body=manifest)
        except KubeRefusedError as exc:
            if exc.code != 409:
                raise
            existing = self._request("get", plural, f"{collection}/{manifest['metadata']['name']}")
            if existing is None:
                raise
            return existing, False
        assert created is not None
        return created, True

    def read_job(self, namespace: str, name: str) -> JobRecord | None:
        """A Job's record, or None when it does not exist."""
        job = self._request("get", "jobs", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        return JobRecord.of(job) if job is not None else None

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods."""
        self._request(
            "delete",
            "jobs",
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
            query={"propagationPolicy": "Background"},
        )

    def job_pods(self, namespace: str, job: str) -> list[JSON]:
        """The pods of a Job, oldest first."""
        return self._list_sorted(
            "pods",
            f"/api/v1/namespaces/{namespace}/pods",
            {"labelSelector": f"{JOB_NAME_LABEL}={job}"},
            key=lambda pod: pod["metadata"].get("creationTimestamp", ""),
        )

    def job_warnings(self, namespace: str, job_uid: str) -> list[JSON]:
        """Warning events of one Job (e.g. FailedCreate: its pods cannot be created), oldest
        first."""
        return self._list_sorted(
            "events",
            f"/api/v1/namespaces/{namespace}/events",
            {"fieldSelector": f"involvedObject.uid={job_uid},type=Warning"},
            key=lambda event: event.get("lastTimestamp") or event.get("eventTime") or "",
        )

    def _list_sorted(
        self, resource: str, path: str, query: dict[str, str], key: Callable[[JSON], str]
    ) -> list[JSON]:
        """The items of a list request, sorted by `key` (an absent list is empty)."""
        listed = self._request("list", resource, path, query=query)
        return sorted((listed or {}).get("items") or [], key=key)

    def post_event(
        self, resource: JSON, kind: Literal["Normal", "Warning"], reason: str, message: str
    ) -> None:
        """A Kubernetes Event on the resource (kubectl describe shows it)."""
        meta = resource["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT, "host": self._host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._request(
            "create", "events", f"/api/v1/namespaces/{meta['namespace']}/events", body=event
        )


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Network failures (no HTTP answer) as KubeUnavailableError."""
    try:
        yield
    except urllib3.exceptions.HTTPError as exc:
        raise KubeUnavailableError(what, 0, "Unreachable", str(exc)) from exc
