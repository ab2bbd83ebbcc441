"""The metatide image as users get it: built from the Dockerfile, run as `docker run` runs it.

``e2e/cluster up`` (or ``e2e/cluster image``) builds this checkout's image with the machine's
builder (podman or docker) on the local Debian base; these checks run it with the same builder,
read-only with a tmpfs at /tmp and no network, which is how Kubernetes runs the operator and
every phase Job. A missing image or builder fails the tests, with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from localkube import images


@pytest.fixture(scope="module")
def image() -> tuple[images.Builder, str]:
    try:
        tool = images.builder()
    except images.ImageError as error:
        pytest.fail(str(error), pytrace=False)
    ref = images.local_ref()
    if not tool.exists(ref):
        pytest.fail(f"{ref} is missing: run e2e/cluster up (or e2e/cluster image)", pytrace=False)
    return tool, ref


def _run(image: tuple[images.Builder, str], *args: str, entrypoint: str | None = None) -> str:
    tool, ref = image
    return tool.run(*tool.container(ref, *args, entrypoint=entrypoint)).stdout.decode()


def test_runs_as_the_non_root_user_10001(image: tuple[images.Builder, str]) -> None:
    assert _run(image, "-u", entrypoint="id").strip() == "10001"
    assert _run(image, "-g", entrypoint="id").strip() == "10001"


def test_metatide_help_works_on_a_read_only_root_with_a_tmpfs(
    image: tuple[images.Builder, str],
) -> None:
    assert "Usage: metatide" in _run(image, "--help")
    assert "operator" in _run(image, "operator", "--help")


FORBIDDEN = r"""
for name in gcc cc c++ g++ clang tcc uv uvx; do command -v "$name"; done
find / -xdev \( \( -name uv -o -name uvx -o -name cc1 -o -name cc1plus \
    -o -name 'x86_64-linux-gnu-gcc*' \) \( -type f -o -type l \) -o -name 'uv-*.dist-info' \) \
    -print 2>/dev/null
/opt/venv/bin/python -c 'import importlib.util as u; print(u.find_spec("uv") or "")'
"""


def test_no_compiler_and_no_uv_in_the_final_image(image: tuple[images.Builder, str]) -> None:
    found = [line for line in _run(image, "-c", FORBIDDEN, entrypoint="sh").splitlines() if line]
    assert found == [], "the runtime image must carry neither a C compiler nor uv"


LOCAL_CAS = Path("/usr/local/share/ca-certificates")
"""Where Debian and Ubuntu keep locally trusted CAs (a TLS-intercepting proxy's goes here);
update-ca-certificates merges them into the bundle that image builds get as a secret."""
SEARCH = "grep -rlF -f - $(ls -d /* | grep -vxE '/(proc|sys|dev|tmp)') 2>/dev/null || true"


def _signature_lines(pem: str) -> list[str]:
    """The last full base64 line of each certificate: signature bytes, unique to it, and a line
    of every PEM file that holds it."""
    found = []
    for block in pem.split("-----BEGIN CERTIFICATE-----")[1:]:
        lines = block.split("-----END CERTIFICATE-----")[0].split()
        found.append(lines[-2])
    return found


def test_the_hosts_private_cas_are_not_baked_in(image: tuple[images.Builder, str]) -> None:
    """The build got the host's CA bundle as a secret mount only: no file of the image holds a
    CA that only this host trusts."""
    pems = sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []
    needles = [line for pem in pems for line in _signature_lines(pem.read_text())]
    tool, ref = image
    args = tool.container(ref, "-c", SEARCH, entrypoint="sh")
    found = tool.run(*args, stdin="\n".join(needles).encode()).stdout.decode() if needles else ""
    assert found.split() == [], f"files holding a private CA of this host ({pems}): {found}"


def test_size_is_reported(
    image: tuple[images.Builder, str], record_property: Callable[[str, object], None]
) -> None:
    """conftest prints the ``image`` property at the end of the run."""
    tool, ref = image
    size = tool.size(ref)
    builder = tool.tool.rsplit("/", 1)[-1]
    short_id = tool.image_id(ref).removeprefix("sha256:")[:12]
    record_property("image", f"{ref}: {size / 1e6:.0f} MB (built by {builder}, id {short_id})")
    assert size > 0
