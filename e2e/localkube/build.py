"""Builds the Kubernetes components, Helm and the pause binary from the Go module proxy.

No prebuilt binary can be downloaded on the machines this project runs on, so the components are
compiled from their Go modules. ``k8s.io/kubernetes`` replaces its ``k8s.io/*`` staging modules
with local paths, which ``go install pkg@version`` refuses, so e2e/kubebuild/ is a small wrapper
module that pins each of them to the published release with ``replace`` directives and lists the
commands as ``tool`` lines. One ``go build`` compiles all four control-plane commands (they
share most packages). etcd comes from the same module graph: the version that this Kubernetes
release requires. The node's commands (kubelet, kube-scheduler) come from the same module graph
in a second ``go build`` with its own cache entry, so adding them never invalidates a cached
control plane; the pause binary that holds each pod's namespaces is compiled from the C source
that the same release ships (build/pause/linux/pause.c), as its own image build does. Results are
cached under ``<cache>/bin/<name>-<version>`` with a stamp of the inputs; GOMODCACHE and GOCACHE
live under ``<cache>/go`` so a rebuild after a change is incremental.
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

from .settings import (
    GO,
    HELM_VERSION,
    KUBEBUILD_DIR,
    KUBERNETES_VERSION,
    NODE_KUBEBUILD_DIR,
    Layout,
)

KUBE_COMMANDS = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
NODE_COMMANDS = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
}
PAUSE = "pause"
PAUSE_SOURCE = "build/pause/linux/pause.c"
PAUSE_CFLAGS = ["-Os", "-Wall", "-Werror", "-static"]
"""As build/pause/Makefile compiles it; the version string gets our suffix."""
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


def node_digest() -> str:
    """The node's build: its wrapper module (e2e/kubebuild/node), version and pause recipe."""
    mod = (NODE_KUBEBUILD_DIR / "go.mod").read_text()
    sums = (NODE_KUBEBUILD_DIR / "go.sum").read_text()
    flags = version_ldflags(KUBERNETES_VERSION)
    return _inputs_digest(KUBERNETES_VERSION, mod, sums, flags, PAUSE_SOURCE, *PAUSE_CFLAGS)


def helm_digest() -> str:
    return _inputs_digest(HELM_VERSION, HELM_PACKAGE)


def is_built(directory: Path, digest: str, names: list[str]) -> bool:
    """True when ``directory`` holds every binary of a finished build of exactly these inputs."""
    stamp = directory / STAMP
    if not stamp.is_file() or json.loads(stamp.read_text()).get("digest") != digest:
        return False
    return all((directory / name).is_file() for name in names)


def _run_logged(args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
    """Runs a build command, output appended to ``log``; BuildError with its tail on failure."""
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


def _go_build(layout: Layout, module: Path, packages: list[str], log: Path) -> Path:
    """One ``go build`` of a wrapper module's commands into a fresh folder beside the cache."""
    out = Path(tempfile.mkdtemp(prefix=".build-", dir=layout.kube_bin.parent))
    args = [GO, "build", "-trimpath", f"-ldflags={version_ldflags(KUBERNETES_VERSION)}"]
    _run_logged([*args, "-o", f"{out}/", *packages], cwd=module, env=go_env(layout), log=log)
    return out


def build_kubernetes(layout: Layout, log: Path) -> bool:
    """Builds the four Kubernetes commands unless this exact build is cached; True if it built."""
    digest = kube_digest()
    if is_built(layout.kube_bin, digest, list(KUBE_COMMANDS)):
        return False
    layout.kube_bin.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out = _go_build(layout, KUBEBUILD_DIR, list(KUBE_COMMANDS.values()), log)
    (out / "server").rename(out / "etcd")  # go names the etcd main package after its module dir
    _install(out, layout.kube_bin, digest, time.monotonic() - started)
    return True


def kubernetes_source(layout: Layout, log: Path) -> Path:
    """The k8s.io/kubernetes module's source folder in the module cache (downloaded if needed)."""
    args = [GO, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"]
    with log.open("a") as out:
        found = subprocess.run(
            args, check=False, cwd=KUBEBUILD_DIR, env=go_env(layout), capture_output=True, text=True
        )
        out.write(found.stderr)
    if found.returncode != 0:
        raise BuildError(f"{' '.join(args[:4])} failed (exit {found.returncode}): {found.stderr}")
    return Path(json.loads(found.stdout)["Dir"])


def pause_version(source: Path) -> str:
    """The pause release this Kubernetes ships (``TAG ?=`` in build/pause/Makefile)."""
    found = re.search(r"^TAG \?= (\S+)$", (source / "build/pause/Makefile").read_text(), re.M)
    if found is None:
        raise BuildError(f"no TAG in {source / 'build/pause/Makefile'}")
    return found.group(1)


def _compile_pause(source: Path, out: Path, log: Path) -> None:
    """Compiles pause.c statically with the host's C compiler (Debian: gcc, libc6-dev)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError("no C compiler for the pause binary: apt-get install gcc libc6-dev")
    version = f"-DVERSION=v{pause_version(source)}-metatide"
    args = [compiler, *PAUSE_CFLAGS, version, "-o", str(out / PAUSE), str(source / PAUSE_SOURCE)]
    _run_logged(args, cwd=out, env=dict(os.environ), log=log)


def build_node(layout: Layout, log: Path) -> bool:
    """Builds kubelet, kube-scheduler and pause unless this exact build is cached."""
    digest = node_digest()
    if is_built(layout.node_bin, digest, [*NODE_COMMANDS, PAUSE]):
        return False
    layout.node_bin.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out = _go_build(layout, NODE_KUBEBUILD_DIR, list(NODE_COMMANDS.values()), log)
    source = kubernetes_source(layout, log)
    _compile_pause(source, out, log)
    (out / "pause.version").write_text(pause_version(source) + "\n")
    _install(out, layout.node_bin, digest, time.monotonic() - started)
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
    _run_logged(args, cwd=out, env=env, log=log)
    _install(out, layout.helm_bin, digest, time.monotonic() - started)
    return True


def build_all(layout: Layout) -> None:
    """Builds whatever is missing, reporting progress on stderr."""
    log = layout.cache / "build.log"
    builds = (("kubernetes", build_kubernetes), ("node", build_node), ("helm", build_helm))
    for name, build in builds:
        started = time.monotonic()
        print(f"localkube: building {name} if needed (log {log})", file=sys.stderr, flush=True)
        if build(layout, log):
            print(f"localkube: built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)


def regenerate_gomod(layout: Layout, version: str) -> None:
    """Rewrites both wrapper modules for another Kubernetes release, then runs ``go mod tidy``.

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
    for directory, module, commands in (
        (KUBEBUILD_DIR, "metatide.dev/e2e/kubebuild", KUBE_COMMANDS),
        (NODE_KUBEBUILD_DIR, "metatide.dev/e2e/kubebuild/node", NODE_COMMANDS),
    ):
        _write_wrapper(directory, module, upstream, version, list(commands.values()))
        subprocess.run([GO, "mod", "tidy"], env=env, cwd=directory, check=True)


def _write_wrapper(
    directory: Path, module: str, upstream: str, version: str, packages: list[str]
) -> None:
    staged = re.findall(r"^\s+(k8s\.io/[\w.-]+) => \./staging/", upstream, flags=re.MULTILINE)
    required = set(re.findall(r"^\s+(k8s\.io/[\w.-]+) v0\.0\.0", upstream, flags=re.MULTILINE))
    published = "v0." + version.lstrip("v").split(".", 1)[1]
    replaces = "".join(f"\t{m} => {m} {published}\n" for m in staged if m in required)
    tools = "".join(f"\t{p}\n" for p in packages)
    go_line = re.search(r"^go (\S+)$", upstream, flags=re.MULTILINE)
    text = (
        f"// Generated by `e2e/cluster gomod {version}` from k8s.io/kubernetes {version}'s go.mod:"
        "\n"
        f"// every k8s.io staging module that it requires as v0.0.0 is pinned to {published}.\n"
        f"module {module}\n\n"
        f"go {go_line.group(1) if go_line else '1.26.0'}\n\n"
        f"require k8s.io/kubernetes {version}\n\n"
        f"replace (\n{replaces})\n\ntool (\n{tools})\n"
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "go.mod").write_text(text)
    (directory / "go.sum").write_text("")
