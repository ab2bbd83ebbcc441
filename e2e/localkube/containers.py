"""From a pod's container spec to a local process: image mapping, environment, argv, exit state.

There are no images here: an image name is mapped to local executables by rules (first match
wins). The default rules run a container's ``command`` + ``args`` as given when the command is an
absolute path or found on the pod's PATH, and map images named ``metatide*`` (any registry or
tag) so that ``metatide`` -- or an empty command, the image's entrypoint -- runs the console
script of this repository's virtualenv. ``$METATIDE_E2E_IMAGE_MAP`` may name a JSON file with
more rules, tried first:
``[{"pattern": "postgres*", "entrypoint": ["/usr/lib/postgresql/15/bin/postgres"],
"commands": {"psql": "/usr/bin/psql"}}]``.

Environment variables follow the kubelet's rules: ``envFrom`` first, then ``env`` in order,
``$(NAME)`` references expanded against what is defined so far (``$$`` escapes), ``valueFrom`` for
Secret keys, ConfigMap keys and ``fieldRef`` (name, namespace, uid, labels and annotations by
key, node name, service account, pod and host IP). ``resourceFieldRef`` is not supported.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import REPO_ROOT

JSON = dict[str, Any]
TERMINATION_ENV = "METATIDE_TERMINATION_MESSAGE_PATH"
"""Names the per-container file whose content becomes the termination message (see kubelet)."""

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """The container cannot start yet (a missing Secret or key, an unmapped image).

    The kubelet reports it as waiting with reason CreateContainerConfigError and retries, as
    the real kubelet does.
    """


@dataclass(frozen=True)
class ImageRule:
    """How containers of matching images become local commands."""

    pattern: str
    entrypoint: tuple[str, ...] = ()
    commands: Mapping[str, str] = field(default_factory=dict)

    def matches(self, image: str) -> bool:
        return fnmatch.fnmatchcase(image_name(image), self.pattern)


def image_name(image: str) -> str:
    """The last path element without tag or digest: ``r.io/x/metatide:1`` -> ``metatide``."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def venv_bin() -> Path:
    return REPO_ROOT / ".venv" / "bin"


def default_rules() -> list[ImageRule]:
    metatide = str(venv_bin() / "metatide")
    return [ImageRule("metatide*", (metatide,), {"metatide": metatide}), ImageRule("*")]


def load_rules(path: str | None = None) -> list[ImageRule]:
    """Rules from ``$METATIDE_E2E_IMAGE_MAP`` (if set) followed by the defaults."""
    path = path or os.environ.get("METATIDE_E2E_IMAGE_MAP")
    extra: list[ImageRule] = []
    if path:
        for rule in json.loads(Path(path).read_text()):
            extra.append(
                ImageRule(
                    rule["pattern"],
                    tuple(rule.get("entrypoint", ())),
                    dict(rule.get("commands", {})),
                )
            )
    return extra + default_rules()


def resolve_argv(container: JSON, env: Mapping[str, str], rules: list[ImageRule]) -> list[str]:
    """The argv to execute: mapped entrypoint or command, plus args, with $(VAR) expanded."""
    image = container.get("image", "")
    rule = next(r for r in rules if r.matches(image))
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    argv = (command or list(rule.entrypoint)) + args
    if not argv:
        raise ContainerConfigError(
            f"image {image!r} has no entrypoint mapping; give the container a command "
            "or add a rule to $METATIDE_E2E_IMAGE_MAP"
        )
    executable = rule.commands.get(argv[0]) or argv[0]
    if not os.path.isabs(executable):
        found = shutil.which(executable, path=env.get("PATH", os.defpath))
        if found is None:
            raise ContainerConfigError(f"{argv[0]!r} (image {image!r}) is not on the pod's PATH")
        executable = found
    if not os.access(executable, os.X_OK):
        raise ContainerConfigError(f"{executable!r} (image {image!r}) is not an executable file")
    return [executable, *argv[1:]]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, unknown ones kept, $$ -> $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


Lookup = Callable[[str, str], JSON | None]
"""(kind, name) -> the Secret or ConfigMap in the pod's namespace, or None if it does not exist."""


def _key_ref(kind: str, ref: JSON, lookup: Lookup) -> str | None:
    obj = lookup(kind, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
    value = _data(kind, obj).get(ref["key"])
    if value is None and not optional:
        raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return value


def _data(kind: str, obj: JSON) -> dict[str, str]:
    """String values of a Secret (base64-decoded) or ConfigMap (data and binaryData)."""
    if kind == "Secret":
        return {
            k: base64.b64decode(v).decode(errors="replace")
            for k, v in (obj.get("data") or {}).items()
        }
    binary = {
        k: base64.b64decode(v).decode(errors="replace")
        for k, v in (obj.get("binaryData") or {}).items()
    }
    return binary | dict(obj.get("data") or {})


def field_value(pod: JSON, path: str) -> str:
    """The value of a downward-API ``fieldRef`` path for this pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    keyed = _FIELD_KEY.match(path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path not in simple:
        raise ContainerConfigError(f"fieldRef {path!r} is not supported by the test kubelet")
    return str(simple[path] or "")


def _value_from(source: JSON, pod: JSON, lookup: Lookup) -> str | None:
    if "secretKeyRef" in source:
        return _key_ref("Secret", source["secretKeyRef"], lookup)
    if "configMapKeyRef" in source:
        return _key_ref("ConfigMap", source["configMapKeyRef"], lookup)
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    raise ContainerConfigError(f"valueFrom {sorted(source)} is not supported by the test kubelet")


def _env_from(sources: list[JSON], lookup: Lookup) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in sources:
        kind, ref = (
            ("Secret", source["secretRef"])
            if "secretRef" in source
            else ("ConfigMap", source["configMapRef"])
        )
        obj = lookup(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in _data(kind, obj).items()})
    return env


def container_env(
    container: JSON, pod: JSON, base: Mapping[str, str], lookup: Lookup
) -> dict[str, str]:
    """The process environment: ``base`` (PATH, HOME, API access...), then envFrom, then env."""
    env = dict(base)
    env.update(_env_from(container.get("envFrom") or [], lookup))
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(var["valueFrom"], pod, lookup)
            if value is None:
                continue
        else:
            value = expand(var.get("value", ""), env)
        env[var["name"]] = value
    return env


def exit_code(returncode: int) -> int:
    """A container exit code as the kubelet reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
