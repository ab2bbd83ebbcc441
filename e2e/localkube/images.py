"""The container images the node runs: a Python base, pause, and metatide from its Dockerfile.

No container registry is reachable from the machines this project's CI runs on, so every image
is built here, with the machine's own image builder (``$METATIDE_IMAGE_TOOL``, else ``docker``
when its engine answers, else ``podman``):

- **base** -- Debian bookworm with CPython 3.11 from Debian's packages, made by ``mmdebstrap``
  and shaped like ``python:3.11-slim`` (``python3.11``, ``python3`` and ``pip`` in
  /usr/local/bin, pip allowed to install, ``LANG=C.UTF-8``). It reaches the Dockerfile through
  its ``PYTHON_IMAGE`` build argument, whose default stays the public image. Its tag carries the
  digest of the recipe, so it is built once and rebuilt only when the recipe changes.
- **pause** -- the binary that ``build`` compiles from the Kubernetes release's source, packed
  with the release's own build/pause/Dockerfile (FROM scratch, user 65535).
- **metatide** -- the repository's Dockerfile, built the way a user builds it. The host's CA
  bundle goes in as the build secret ``ca-bundle`` (package traffic may pass a TLS-intercepting
  proxy); the Dockerfile mounts it only while pip and uv download, so no layer keeps it. The
  builder's layer cache keeps the dependency layer until pyproject.toml or uv.lock change, so a
  rebuild after a source change only installs the project.

Used by ``e2e/cluster image`` and ``e2e/cluster up`` (which imports the images into the node's
containerd), by e2e/kind/run.sh (``kind load docker-image``) and by e2e/test_image.py.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .settings import REPO_ROOT, Layout

IMAGE_TOOL_ENV = "METATIDE_IMAGE_TOOL"
PYTHON_IMAGE_ENV = "METATIDE_PYTHON_IMAGE"
"""Set it (e.g. to python:3.11-slim) to build on a pullable base instead of the local one."""
MIRROR_ENV = "METATIDE_DEBIAN_MIRROR"
CA_BUNDLE_ENV = "METATIDE_CA_BUNDLE"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3-pip", "ca-certificates", "netbase", "tzdata")
"""What python:3.11-slim offers: the interpreter and standard library, pip, CAs, tzdata."""
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
BASE_HOOKS = (
    # python:3.11-slim's Python is not "externally managed": pip may install into it.
    'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
    # ... and lives in /usr/local/bin, where the Dockerfile's builder stage expects it.
    'for n in python3.11 python3 python; do ln -sf /usr/bin/python3.11 "$1/usr/local/bin/$n"; done',
    'for n in pip pip3; do ln -sf /usr/bin/pip3 "$1/usr/local/bin/$n"; done',
)
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
E2E_IMAGE = "docker.io/library/metatide:e2e"
"""The name pods of the e2e suite use (``metatide:e2e``), fully qualified as containerd sees it."""


def chart_image() -> str:
    """The image the Helm chart installs with its default values (``image.repository`` and the
    chart's appVersion). The node knows this checkout's image under that name too, so
    ``helm install`` with default values runs as written: what a registry does for users."""
    chart = (REPO_ROOT / "charts" / "metatide" / "Chart.yaml").read_text()
    values = (REPO_ROOT / "charts" / "metatide" / "values.yaml").read_text()
    version = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.MULTILINE)
    repository = re.search(r"^\s+repository:\s*(\S+)", values, re.MULTILINE)
    if version is None or repository is None:
        raise ImageError("charts/metatide: no appVersion or image.repository found")
    return f"{repository.group(1)}:{version.group(1)}"


class ImageError(RuntimeError):
    """An image could not be built or checked; the message names the command and its output."""


@dataclass(frozen=True)
class Builder:
    """The image builder command (docker or podman) and what differs between the two."""

    tool: str

    @property
    def is_podman(self) -> bool:
        return Path(self.tool).name == "podman"

    def run(
        self, *args: str, stdin: bytes | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        """Runs ``TOOL args...`` with captured output; ImageError if ``check`` and it fails."""
        env = os.environ | {"DOCKER_BUILDKIT": "1"}  # docker 20.10 needs it for --secret
        done = subprocess.run(
            [self.tool, *args],
            input=stdin,
            capture_output=True,
            check=False,
            env=env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise ImageError(
                f"{self.tool} {' '.join(args[:3])} exited {done.returncode}:\n"
                f"{done.stderr.decode(errors='replace')[-4000:]}"
            )
        return done

    def exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def image_id(self, ref: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip()

    def size(self, ref: str) -> int:
        """The image's unpacked size in bytes, as ``docker images`` reports it."""
        out = self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.decode()
        return int(out.strip())

    @staticmethod
    def network_options() -> list[str]:
        """The host's network for RUN steps: it works wherever the host can download, while a
        builder's default bridge needs NAT rules (podman's also a CNI set-up) that CI lacks."""
        return ["--network", "host"]

    def container(self, ref: str, *args: str, entrypoint: str | None = None) -> list[str]:
        """``run`` arguments for a throwaway container as Kubernetes runs ours: read-only root,
        a tmpfs at /tmp, no network, the image's own user."""
        options = ["run", "--rm", "-i", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
        if self.is_podman:
            # podman asks for root's maximum open files and processes; raising a hard limit
            # needs CAP_SYS_RESOURCE, which machines like this CI's do not grant.
            options += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
        if entrypoint:
            options += ["--entrypoint", entrypoint]
        return [*options, ref, *args]


def builder() -> Builder:
    """The configured builder, else docker with a live engine, else podman; or ImageError."""
    chosen = os.environ.get(IMAGE_TOOL_ENV)
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise ImageError(f"${IMAGE_TOOL_ENV}={chosen!r} is not on PATH")
        return Builder(path)
    docker = shutil.which("docker")
    if docker and Builder(docker).run("info", check=False, timeout=30).returncode == 0:
        return Builder(docker)
    podman = shutil.which("podman")
    if podman:
        return Builder(podman)
    raise ImageError(
        "no image builder: install podman (Debian: apt-get install podman) or start a Docker "
        f"engine, or name one in ${IMAGE_TOOL_ENV}"
    )


def _say(message: str) -> None:
    print(f"localkube: {message}", file=sys.stderr, flush=True)


# -- the base -------------------------------------------------------------------------------------
def _mirror() -> str:
    return os.environ.get(MIRROR_ENV, "http://deb.debian.org").rstrip("/")


def base_sources() -> list[str]:
    mirror = _mirror()
    return [
        f"deb {mirror}/debian {DEBIAN_SUITE} main",
        f"deb {mirror}/debian {DEBIAN_SUITE}-updates main",
        f"deb {mirror}/debian-security {DEBIAN_SUITE}-security main",
    ]


def mmdebstrap_recipe() -> list[str]:
    """The mmdebstrap command that writes the base's root filesystem as a tar on stdout."""
    argv = ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet"]
    argv.append("--include=" + ",".join(BASE_PACKAGES))
    argv += [f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS]
    argv += [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    if DEBIAN_KEYRING.is_file():  # a Debian suite from any host (e.g. an Ubuntu CI runner)
        argv.append(f"--keyring={DEBIAN_KEYRING}")
    return [*argv, DEBIAN_SUITE, "-", *base_sources()]


def mmdebstrap_argv() -> list[str]:
    """The recipe, through sudo when not root: mmdebstrap's root mode works everywhere, while
    its unprivileged mode needs user namespaces that hosts may disable."""
    recipe = mmdebstrap_recipe()
    return ["sudo", *recipe] if os.geteuid() != 0 and shutil.which("sudo") else recipe


def base_ref() -> str:
    """The base's tag: its suite plus a digest of the recipe (a changed recipe rebuilds it)."""
    recipe = json.dumps([mmdebstrap_recipe(), BASE_CHANGES])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"localhost/metatide-python:3.11-{DEBIAN_SUITE}-{digest}"


def build_base(tool: Builder) -> str:
    """Makes the base with mmdebstrap and imports it into the builder, unless it exists."""
    ref = base_ref()
    if tool.exists(ref):
        return ref
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is needed to make the Python base image (Debian/Ubuntu: apt-get install "
            f"mmdebstrap); or set ${PYTHON_IMAGE_ENV}=python:3.11-slim where registries answer"
        )
    _say(f"making the base image {ref} with mmdebstrap ({DEBIAN_SUITE}, {_mirror()})")
    started = time.monotonic()
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    with tempfile.TemporaryFile() as errors:
        bootstrap = subprocess.Popen(mmdebstrap_argv(), stdout=subprocess.PIPE, stderr=errors)
        assert bootstrap.stdout is not None
        imported = subprocess.run(
            [tool.tool, "import", *changes, "-", ref],
            stdin=bootstrap.stdout,
            capture_output=True,
            check=False,
        )
        bootstrap.stdout.close()
        code = bootstrap.wait()
        errors.seek(0)
        problem = errors.read().decode(errors="replace")[-4000:]
    if code != 0:
        raise ImageError(f"mmdebstrap exited {code}:\n{problem}")
    if imported.returncode != 0:
        raise ImageError(f"{tool.tool} import failed:\n{imported.stderr.decode()[-4000:]}")
    _say(f"base image made in {time.monotonic() - started:.0f}s")
    return ref


# -- pause ----------------------------------------------------------------------------------------
def build_pause(tool: Builder, layout: Layout, source: Path) -> str:
    """Packs the built pause binary with the release's build/pause/Dockerfile."""
    version = (layout.node_bin / "pause.version").read_text().strip()
    ref = f"localhost/metatide-pause:{version}"
    with tempfile.TemporaryDirectory(prefix="metatide-pause-") as context:
        (Path(context) / "bin").mkdir()
        shutil.copy2(layout.node_bin / "pause", Path(context) / "bin" / "pause-linux-amd64")
        tool.run(
            "build",
            *tool.network_options(),
            "--file",
            str(source / "build" / "pause" / "Dockerfile"),
            "--build-arg",
            "BASE=scratch",
            "--build-arg",
            "ARCH=amd64",
            "--tag",
            ref,
            context,
        )
    return ref


# -- metatide -------------------------------------------------------------------------------------
def ca_bundle() -> Path | None:
    """The CA bundle handed to the build: $METATIDE_CA_BUNDLE, else the host's, if present."""
    named = os.environ.get(CA_BUNDLE_ENV)
    if named:
        return Path(named)
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


def python_image(tool: Builder) -> str:
    """The PYTHON_IMAGE build argument: $METATIDE_PYTHON_IMAGE, else the local base."""
    return os.environ.get(PYTHON_IMAGE_ENV) or build_base(tool)


def build_metatide(tool: Builder, ref: str, base: str, log: Path) -> float:
    """``TOOL build`` of the repository's Dockerfile as ``ref``; returns the seconds it took."""
    argv = ["build", *tool.network_options(), "--build-arg", f"PYTHON_IMAGE={base}"]
    bundle = ca_bundle()
    if bundle is not None:
        argv += ["--secret", f"id=ca-bundle,src={bundle}"]
    argv += ["--tag", ref, str(REPO_ROOT)]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = tool.run(*argv, check=False, timeout=1800)
    log.write_bytes(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise ImageError(f"{tool.tool} build exited {done.returncode}; log {log}:\n{tail}")
    return time.monotonic() - started


def local_ref() -> str:
    """This checkout's own tag for its image: worktrees sharing one builder never collide."""
    digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:8]
    return f"localhost/metatide-e2e:{digest}"


def build_project_image(layout: Layout, ref: str | None = None) -> str:
    """Builds (base if needed, then) the metatide image and reports time and size."""
    tool = builder()
    ref = ref or local_ref()
    base = python_image(tool)
    _say(f"building {ref} from the Dockerfile with {Path(tool.tool).name} (base {base})")
    log = layout.cache / "logs" / f"image-{hashlib.sha256(ref.encode()).hexdigest()[:8]}.log"
    seconds = build_metatide(tool, ref, base, log)
    size = tool.size(ref)
    _say(f"built {ref} in {seconds:.1f}s; size {size / 1e6:.0f} MB")
    return ref


def save(tool: Builder, ref: str, errors: IO[bytes]) -> subprocess.Popen[bytes]:
    """A running ``TOOL save`` of ``ref``: a docker-archive on its stdout, for containerd."""
    args = [tool.tool, "save", ref]
    if tool.is_podman:
        args[2:2] = ["--format", "docker-archive"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors)
