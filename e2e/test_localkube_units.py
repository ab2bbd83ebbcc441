"""Fast checks of the test kubelet's pure rules (no cluster): env expansion, image mapping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from localkube.containers import (
    ContainerConfigError,
    ImageRule,
    container_env,
    default_rules,
    exit_code,
    expand,
    field_value,
    image_name,
    resolve_argv,
    venv_bin,
)

POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "annotations": {"a/b": "x"}},
    "spec": {"nodeName": "metatide-e2e", "serviceAccountName": "sa"},
}


def _no_objects(kind: str, name: str) -> None:
    return None


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_env_order_envfrom_then_env_with_references() -> None:
    container = {
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "hi $(POD) $(HOME)"},
            {
                "name": "OPTIONAL",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
            },
        ]
    }
    env = container_env(container, POD, {"HOME": "/h"}, _no_objects)
    assert env == {"HOME": "/h", "POD": "p", "GREETING": "hi p /h"}


def test_missing_secret_is_a_config_error() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match='Secret "s" not found'):
        container_env(container, POD, {}, _no_objects)


def test_field_refs_reach_annotations_by_key() -> None:
    assert field_value(POD, "metadata.annotations['a/b']") == "x"
    assert field_value(POD, "spec.serviceAccountName") == "sa"
    with pytest.raises(ContainerConfigError):
        field_value(POD, "spec.unknown")


def test_image_names_and_metatide_mapping() -> None:
    assert image_name("ghcr.io/org/metatide:1.2@sha256:abc") == "metatide"
    rules = default_rules()
    script = str(venv_bin() / "metatide")
    if not Path(script).exists():
        pytest.fail(f"{script} is missing: run `uv sync` (the kubelet maps metatide images to it)")
    assert resolve_argv({"image": "r/metatide:dev", "args": ["run"]}, {}, rules) == [script, "run"]
    assert (
        resolve_argv({"image": "r/metatide:dev", "command": ["metatide", "x"]}, {}, rules)[0]
        == script
    )


def test_other_images_run_the_command_from_path_or_absolute() -> None:
    rules = [ImageRule("*")]
    shell = {"image": "busybox", "command": ["sh", "-c", "true"]}
    assert resolve_argv(shell, {"PATH": "/bin"}, rules) == ["/bin/sh", "-c", "true"]
    argv = resolve_argv({"image": "python", "command": [sys.executable, "-V"]}, {}, rules)
    assert argv == [sys.executable, "-V"]
    with pytest.raises(ContainerConfigError, match="no entrypoint mapping"):
        resolve_argv({"image": "busybox"}, {}, rules)


def test_exit_codes_of_signals() -> None:
    assert (exit_code(0), exit_code(3), exit_code(-9), exit_code(-15)) == (0, 3, 137, 143)
