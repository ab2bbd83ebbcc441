"""Builds etcd, kube-apiserver, kube-controller-manager, kubectl and Helm from the Go module proxy.

No prebuilt binary can be downloaded on the machines this project runs on, so the components are
compiled from their Go modules. ``k8s.io/kubernetes`` replaces its ``k8s.io/*`` staging modules
with local paths, which ``go install pkg@version`` refuses, so e2e/kubebuild/ is a small wrapper
module that pins each of them to the published release with ``replace`` directives and lists the
commands as ``tool`` lines. One ``go build`` compiles all four commands (they share most
packages). etcd comes from the same module graph: the version that this Kubernetes release
requires. Results are cached under ``<cache>/bin/<name>-<version>`` with a stamp of the inputs;
GOMODCACHE and GOCACHE live under ``<cache>/go`` so a rebuild after a change is incremental.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .settings import GO, HELM_VERSION, KUBEBUILD_DIR, KUBERNETES_VERSION, Layout

KUBE_COMMANDS = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
STAMP = ".stamp.json"


class BuildError(RuntimeError):
    """A go command failed; the message carries the tail of its output."""


def go_env(layout: Layout) -> dict[str, str]:
    """The environment of every go command: local toolchain, shared caches, static binaries."""
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        GOMODCACHE=str(layout.go_mod_cache),
        GOCACHE=str(layout.go_build_cache),
        GOFLAGS="-mod=readonly -buildvcs=false",
        CGO_ENABLED="0",
    )
    return env


def version_ldflags(version: str) -> str:
    """Linker flags that stamp the release into the binaries, as Kubernetes' own build does.

    Without them the API server reports v0.0.0-master, and Helm charts with a kubeVersion
    constraint refuse to install.
    """
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _inputs_digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def kube_digest() -> str:
    """Identifies a build of the wrapper module: its go.mod and go.sum plus the pinned version."""
    mod = (KUBEBUILD_DIR / "go.mod").read_text()
    sums = (KUBEBUILD_DIR / "go.sum").read_text()
    return _inputs_digest(KUBERNETES_VERSION, mod, sums, version_ldflags(KUBERNETES_VERSION))


def helm_digest() -> str:
    return _inputs_digest(HELM_VERSION, HELM_PACKAGE)


def is_built(directory: Path, digest: str, names: list[str]) -> bool:
    """True when ``directory`` holds every binary of a finished build of exactly these inputs."""
    stamp = directory / STAMP
    if not stamp.is_file() or json.loads(stamp.read_text()).get("digest") != digest:
        return False
    return all((directory / name).is_file() for name in names)


def _run_go(args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
    """Runs a go command with its output in ``log``; raises BuildError with the tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            args, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise BuildError(
            f"{' '.join(args[:3])} failed (exit {done.returncode}); log {log}:\n{tail}"
        )


def _install(built: Path, target: Path, digest: str, seconds: float) -> None:
    """Moves a finished build into place with its stamp, replacing any older one."""
    (built / STAMP).write_text(json.dumps({"digest": digest, "seconds": round(seconds, 1)}))
    built.chmod(0o755)  # mkdtemp made it private; the binaries are not secret
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    built.rename(target)


def build_kubernetes(layout: Layout, log: Path) -> bool:
    """Builds the four Kubernetes commands unless this exact build is cached; True if it built."""
    digest = kube_digest()
    if is_built(layout.kube_bin, digest, list(KUBE_COMMANDS)):
        return False
    layout.kube_bin.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=".kube-", dir=layout.kube_bin.parent))
    started = time.monotonic()
    args = [
        GO,
        "build",
        "-trimpath",
        f"-ldflags={version_ldflags(KUBERNETES_VERSION)}",
        "-o",
        f"{out}/",
    ]
    _run_go(args + list(KUBE_COMMANDS.values()), cwd=KUBEBUILD_DIR, env=go_env(layout), log=log)
    (out / "server").rename(out / "etcd")  # go names the etcd main package after its module dir
    _install(out, layout.kube_bin, digest, time.monotonic() - started)
    return True


def build_helm(layout: Layout, log: Path) -> bool:
    """Builds Helm 3 with ``go install`` unless cached; True if it built."""
    digest = helm_digest()
    if is_built(layout.helm_bin, digest, ["helm"]):
        return False
    layout.helm_bin.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=".helm-", dir=layout.helm_bin.parent))
    env = go_env(layout) | {"GOBIN": str(out), "GOFLAGS": "-buildvcs=false"}
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    started = time.monotonic()
    args = [GO, "install", "-trimpath", f"-ldflags={ldflags}", f"{HELM_PACKAGE}@{HELM_VERSION}"]
    _run_go(args, cwd=out, env=env, log=log)
    _install(out, layout.helm_bin, digest, time.monotonic() - started)
    return True


def build_all(layout: Layout) -> None:
    """Builds whatever is missing, reporting progress on stderr."""
    log = layout.cache / "build.log"
    for name, build in (("kubernetes", build_kubernetes), ("helm", build_helm)):
        started = time.monotonic()
        print(f"localkube: building {name} if needed (log {log})", file=sys.stderr, flush=True)
        if build(layout, log):
            print(f"localkube: built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)


def regenerate_gomod(layout: Layout, version: str) -> None:
    """Rewrites e2e/kubebuild/go.mod for another Kubernetes release, then runs ``go mod tidy``.

    Reads the release's own go.mod and pins every staging module that it requires as v0.0.0
    to the matching published v0.<minor>.<patch>. Update KUBERNETES_VERSION to match.
    """
    env = go_env(layout) | {"GOFLAGS": "-mod=mod"}
    found = subprocess.run(
        [GO, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=KUBEBUILD_DIR,
    )
    upstream = Path(json.loads(found.stdout)["GoMod"]).read_text()
    staged = re.findall(r"^\s+(k8s\.io/[\w.-]+) => \./staging/", upstream, flags=re.MULTILINE)
    required = set(re.findall(r"^\s+(k8s\.io/[\w.-]+) v0\.0\.0", upstream, flags=re.MULTILINE))
    published = "v0." + version.lstrip("v").split(".", 1)[1]
    replaces = "".join(f"\t{m} => {m} {published}\n" for m in staged if m in required)
    tools = "".join(f"\t{p}\n" for p in KUBE_COMMANDS.values())
    go_line = re.search(r"^go (\S+)$", upstream, flags=re.MULTILINE)
    text = (
        f"// Generated by `e2e/cluster gomod {version}` from k8s.io/kubernetes {version}'s go.mod:"
        "\n"
        f"// every k8s.io staging module that it requires as v0.0.0 is pinned to {published}.\n"
        "module metatide.dev/e2e/kubebuild\n\n"
        f"go {go_line.group(1) if go_line else '1.26.0'}\n\n"
        f"require k8s.io/kubernetes {version}\n\n"
        f"replace (\n{replaces})\n\ntool (\n{tools})\n"
    )
    (KUBEBUILD_DIR / "go.mod").write_text(text)
    (KUBEBUILD_DIR / "go.sum").write_text("")
    subprocess.run([GO, "mod", "tidy"], env=env, cwd=KUBEBUILD_DIR, check=True)
