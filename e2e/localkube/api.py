"""A small HTTPS client for the Kubernetes API, on the standard library only.

The harness must run before the project's virtualenv has its optional ``operator`` extra, and
the test kubelet needs only JSON verbs and watches, so this avoids any third-party client. It
reads the kubeconfigs that ``pki`` writes (client certificate files or a bearer token, CA data).
Each call opens its own connection, which keeps it safe to use from several threads.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path} -> {status}: {message}")


@dataclass(frozen=True)
class Api:
    """Where the API server is and how to authenticate to it."""

    host: str
    port: int
    context: ssl.SSLContext
    token: str | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Api:
        """Reads the current context of a kubeconfig written by this harness (JSON)."""
        config = json.loads(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        if "client-certificate" in user:
            context.load_cert_chain(user["client-certificate"], user["client-key"])
        url = urllib.parse.urlsplit(cluster["server"])
        return cls(url.hostname or "127.0.0.1", url.port or 443, context, user.get("token"))

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "metatide-localkube"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        """Sends one request and returns the decoded JSON answer; raises ApiError on >= 400."""
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        connection = self._connection(timeout)
        try:
            connection.request(
                method, url, body=payload, headers=self._headers(content_type if payload else None)
            )
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError(method, url, response.status, text)
        return json.loads(text) if text else {}

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def patch(self, path: str, body: JSON, *, strategic: bool = False) -> JSON:
        return self.request(
            "PATCH", path, body, content_type=STRATEGIC_PATCH if strategic else MERGE_PATCH
        )

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def text(self, path: str, timeout: float = 30.0, **query: str) -> str:
        """GETs a plain-text resource such as a health endpoint or pod logs."""
        connection = self._connection(timeout)
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            connection.request("GET", url, headers=self._headers(None))
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError("GET", url, response.status, text)
        return text

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 300
    ) -> Iterator[tuple[str, JSON]]:
        """Yields (type, object) events from ``resource_version`` on until the server closes.

        Raises ApiError(410) when the version is too old; the caller lists again.
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        url = f"{path}?{urllib.parse.urlencode(query)}"
        connection = self._connection(timeout_seconds + 30)
        try:
            connection.request("GET", url, headers=self._headers(None))
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError("GET", url, response.status, response.read().decode())
            for line in response:
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    raise ApiError("WATCH", url, int(status.get("code", 500)), json.dumps(status))
                yield event["type"], event["object"]
        finally:
            connection.close()
