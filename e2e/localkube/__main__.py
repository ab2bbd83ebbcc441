"""The ``e2e/cluster`` command: build, image, up, load, down, status, env, kubectl, helm, gomod.

``up`` prints only the admin kubeconfig path on stdout (progress goes to stderr), so scripts can
write ``KUBECONFIG=$(e2e/cluster up)``. On failure it exits 1 with the failing component's log
tail on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from . import build, controlplane, images, network, node
from .settings import KUBERNETES_VERSION, Layout, layout

USAGE = """\
usage: e2e/cluster COMMAND [ARGS...]

  build                  build etcd, kube-apiserver, kube-controller-manager, kubectl, kubelet,
                         kube-scheduler, pause and helm (cached)
  image [--tag REF]      build the metatide image from the Dockerfile (and its local base);
                         prints its size. REF defaults to this checkout's local tag
  up [--component-arg COMPONENT=ARG ...]
                         start the cluster (or reuse a running one); prints the kubeconfig path
  load                   rebuild the image and import it into the running node if it changed
  down                   stop everything 'up' started and remove its state (logs are kept)
  status                 JSON: which components run
  env                    shell lines that point KUBECONFIG and PATH at the cluster
  kubectl ARGS...        the built kubectl against the cluster
  helm ARGS...           the built helm against the cluster
  gomod [VERSION]        regenerate e2e/kubebuild/go.mod for a Kubernetes release

Environment: METATIDE_CACHE_DIR (default ~/.cache/metatide), METATIDE_E2E_DIR (cluster state,
default $METATIDE_CACHE_DIR/cluster), METATIDE_E2E_HOST_PORTS (host ports pods reach at the
node's address, default $METATIDE_PG_PORT,$METATIDE_S3_PORT,$METATIDE_MYSQL_PORT, else
55432,59000,53306), METATIDE_IMAGE_TOOL (docker or podman),
METATIDE_PYTHON_IMAGE (a pullable base instead of the local one), METATIDE_CA_BUNDLE (the CA
bundle handed to image builds, default /etc/ssl/certs/ca-certificates.crt).
"""


def _exec(tool: str, args: list[str]) -> None:
    where = layout()
    binary = where.kubectl if tool == "kubectl" else where.helm
    if not binary.exists():
        sys.exit(f"{binary} is missing: run e2e/cluster build")
    os.environ["KUBECONFIG"] = str(where.admin_kubeconfig)
    os.execv(binary, [str(binary), *args])


def _component_args(pairs: list[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for pair in pairs:
        component, _, arg = pair.partition("=")
        if component not in controlplane.COMPONENTS or not arg:
            known = ", ".join(controlplane.COMPONENTS)
            sys.exit(
                f"--component-arg wants COMPONENT=ARG with COMPONENT one of {known}; got {pair!r}"
            )
        extra.setdefault(component, []).append(arg)
    return extra


def _up(where: Layout, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="e2e/cluster up")
    parser.add_argument("--component-arg", action="append", default=[], metavar="COMPONENT=ARG")
    options = parser.parse_args(rest)
    try:
        print(controlplane.up(where, _component_args(options.component_arg)))
    except FAILURES as error:
        print(f"localkube: {error}", file=sys.stderr)
        return 1
    return 0


FAILURES = (
    controlplane.ComponentError,
    build.BuildError,
    images.ImageError,
    node.NodeError,
    network.NetworkError,
)


def _image(where: Layout, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="e2e/cluster image")
    parser.add_argument("--tag", help="the image's name (default: this checkout's local tag)")
    options = parser.parse_args(rest)
    try:
        print(images.build_project_image(where, options.tag))
    except images.ImageError as error:
        print(f"localkube: {error}", file=sys.stderr)
        return 1
    return 0


def _load(where: Layout, rest: list[str]) -> int:
    if controlplane.running(where) is None:
        print("localkube: no running cluster here: run e2e/cluster up", file=sys.stderr)
        return 1
    try:
        controlplane.load(where)
    except FAILURES as error:
        print(f"localkube: {error}", file=sys.stderr)
        return 1
    return 0


def _relay(where: Layout, rest: list[str]) -> int:
    from . import relay  # only the relay process needs it

    relay.main(rest)
    return 0


def _env(where: Layout, rest: list[str]) -> int:
    print(f"export KUBECONFIG={where.admin_kubeconfig}")
    print(f"export PATH={where.kube_bin}:{where.helm_bin}:$PATH")
    return 0


def _status(where: Layout, rest: list[str]) -> int:
    print(json.dumps(controlplane.status(where), indent=2))
    return 0


def _simple(action: Callable[[Layout], object]) -> Callable[[Layout, list[str]], int]:
    def run(where: Layout, rest: list[str]) -> int:
        action(where)
        return 0

    return run


def _gomod(where: Layout, rest: list[str]) -> int:
    build.regenerate_gomod(where, rest[0] if rest else KUBERNETES_VERSION)
    return 0


COMMANDS: dict[str, Callable[[Layout, list[str]], int]] = {
    "build": _simple(build.build_all),
    "image": _image,
    "up": _up,
    "load": _load,
    "down": _simple(controlplane.down),
    "status": _status,
    "env": _env,
    "gomod": _gomod,
    "relay": _relay,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("kubectl", "helm"):
        _exec(command, rest)
    handler = COMMANDS.get(command)
    if handler is None:
        print(f"e2e/cluster: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
        return 2
    return handler(layout(), rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
