"""The ``e2e/cluster`` command: build, up, down, status, env, kubectl, helm, gomod.

``up`` prints only the admin kubeconfig path on stdout (progress goes to stderr), so scripts can
write ``KUBECONFIG=$(e2e/cluster up)``. On failure it exits 1 with the failing component's log
tail on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import build, controlplane
from .settings import KUBERNETES_VERSION, layout

USAGE = """\
usage: e2e/cluster COMMAND [ARGS...]

  build                  build etcd, kube-apiserver, kube-controller-manager, kubectl, helm (cached)
  up [--component-arg COMPONENT=ARG ...]
                         start the cluster (or reuse a running one); prints the kubeconfig path
  down                   stop everything 'up' started and remove its state (logs are kept)
  status                 JSON: which components run
  env                    shell lines that point KUBECONFIG and PATH at the cluster
  kubectl ARGS...        the built kubectl against the cluster
  helm ARGS...           the built helm against the cluster
  gomod [VERSION]        regenerate e2e/kubebuild/go.mod for a Kubernetes release

Environment: METATIDE_CACHE_DIR (default ~/.cache/metatide), METATIDE_E2E_DIR (cluster state,
default $METATIDE_CACHE_DIR/cluster), METATIDE_E2E_IMAGE_MAP (extra image rules, JSON).
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
            sys.exit(f"--component-arg wants COMPONENT=ARG with COMPONENT in {controlplane.COMPONENTS}, got {pair!r}")
        extra.setdefault(component, []).append(arg)
    return extra


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    where = layout()
    if command in ("kubectl", "helm"):
        _exec(command, rest)
    if command == "kubelet":
        from . import kubelet

        kubelet.main(rest)
        return 0
    if command == "build":
        build.build_all(where)
        return 0
    if command == "up":
        parser = argparse.ArgumentParser(prog="e2e/cluster up")
        parser.add_argument("--component-arg", action="append", default=[], metavar="COMPONENT=ARG")
        options = parser.parse_args(rest)
        try:
            print(controlplane.up(where, _component_args(options.component_arg)))
        except (controlplane.ComponentFailed, build.BuildError) as error:
            print(f"localkube: {error}", file=sys.stderr)
            return 1
        return 0
    if command == "down":
        controlplane.down(where)
        return 0
    if command == "status":
        print(json.dumps(controlplane.status(where), indent=2))
        return 0
    if command == "env":
        print(f"export KUBECONFIG={where.admin_kubeconfig}")
        print(f"export PATH={where.kube_bin}:{where.helm_bin}:$PATH")
        return 0
    if command == "gomod":
        build.regenerate_gomod(where, rest[0] if rest else KUBERNETES_VERSION)
        return 0
    print(f"e2e/cluster: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
