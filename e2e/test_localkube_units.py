"""Fast checks of the harness's own rules (no cluster): addresses, relay, node and image recipes."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from pathlib import Path

import pytest
from localkube import images, network, node
from localkube.network import Network
from localkube.relay import Route, serve
from localkube.settings import host_ports


def test_the_gateway_is_the_node_and_the_kubernetes_service_address() -> None:
    net = Network(bridge="mtk-0", subnet="10.201.7.0/24")
    assert net.gateway == "10.201.7.1"
    assert net.service_cidr == "10.201.7.0/27"
    assert ipaddress.ip_address(net.gateway) in ipaddress.ip_network(net.service_cidr)
    assert net.first_pod_address == "10.201.7.32"
    assert ipaddress.ip_address(net.first_pod_address) not in ipaddress.ip_network(net.service_cidr)


def test_a_subnet_in_use_on_the_host_is_never_chosen(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = network.choose_subnet(state, [])
    assert first.subnet_of(network.SUBNETS)
    assert network.choose_subnet(state, []) == first, "the same directory, the same subnet"
    taken = [first, ipaddress.ip_network("10.201.0.0/17"), ipaddress.ip_network("10.201.128.0/17")]
    with pytest.raises(network.NetworkError, match="no free /24"):
        network.choose_subnet(state, taken)
    other = network.choose_subnet(state, [first])
    assert other != first


def test_cni_config_names_the_bridge_range_and_gateway(tmp_path: Path) -> None:
    net = Network(bridge="mtk-1", subnet="10.201.9.0/24")
    config = network.cni_config(net, "metatide-x", tmp_path)
    (bridge,) = config["plugins"]
    assert (bridge["type"], bridge["bridge"], bridge["ipMasq"]) == ("bridge", "mtk-1", False)
    (span,) = bridge["ipam"]["ranges"][0]
    assert (span["rangeStart"], span["rangeEnd"], span["gateway"]) == (
        "10.201.9.32",
        "10.201.9.254",
        "10.201.9.1",
    )


def test_relayed_ports_follow_the_services_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("METATIDE_E2E_HOST_PORTS", "METATIDE_PG_PORT", "METATIDE_MYSQL_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METATIDE_S3_PORT", "59100")
    assert host_ports() == [55432, 59100, 53306]
    monkeypatch.setenv("METATIDE_E2E_HOST_PORTS", "1, 2")
    assert host_ports() == [1, 2]


def test_route_parsing() -> None:
    route = Route.parse("10.201.3.1:443=127.0.0.1:6443")
    assert (route.listen, route.target) == (("10.201.3.1", 443), ("127.0.0.1", 6443))
    assert str(route) == "10.201.3.1:443=127.0.0.1:6443"
    with pytest.raises(ValueError, match="HOST:PORT=HOST:PORT"):
        Route.parse("10.201.3.1:443")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_relay_copies_both_ways_and_passes_the_half_close_on() -> None:
    async def scenario() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()  # until the client's half-close arrives
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = upstream.sockets[0].getsockname()[1]
        listen = _free_port()
        relay = asyncio.create_task(serve([Route(("127.0.0.1", listen), ("127.0.0.1", target))]))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        writer.write(b"hello through the relay")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        upstream.close()
        return answer

    assert asyncio.run(scenario()) == b"HELLO THROUGH THE RELAY"


def test_kubelet_config_runs_on_this_machine_kind(tmp_path: Path) -> None:
    """cgroup v1 allowed, cgroupfs driver, own cgroup root, no image garbage collection."""
    where = node.NodeLayout(tmp_path)
    net = Network(bridge="mtk-2", subnet="10.201.10.0/24")
    settings = node.KubeletSettings(
        port=10250, ca=tmp_path / "ca.crt", serving=(tmp_path / "c", tmp_path / "k"),
        cgroup_root="/metatide-abc",
    )  # fmt: skip
    config = node.kubelet_config(where, net, settings)
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/metatide-abc"
    assert config["address"] == "10.201.10.1"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["containerRuntimeEndpoint"] == f"unix://{where.socket}"


def test_containerd_config_uses_the_local_pause_image_and_this_node_s_paths(
    tmp_path: Path,
) -> None:
    text = node.containerd_config(node.NodeLayout(tmp_path), "localhost/metatide-pause:3.10.2")
    assert 'sandbox_image = "localhost/metatide-pause:3.10.2"' in text
    assert f'address = "{tmp_path / "containerd" / "containerd.sock"}"' in text
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text


def test_shared_folder_policy_only_touches_labelled_namespaces(tmp_path: Path) -> None:
    policy, binding = node.shared_folder_policy(tmp_path)
    constraints = policy["spec"]["matchConstraints"]
    assert constraints["namespaceSelector"] == {"matchLabels": {node.SHARED_LABEL: "true"}}
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    expression = policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    assert f'path: "{tmp_path}"' in expression
    assert expression.count("{") == expression.count("}")


def test_base_image_recipe_is_shaped_like_python_slim_and_named_by_its_digest() -> None:
    argv = images.mmdebstrap_argv()
    assert "--include=" + ",".join(images.BASE_PACKAGES) in argv
    assert any("/usr/local/bin/$n" in arg for arg in argv)
    assert any("EXTERNALLY-MANAGED" in arg for arg in argv)
    ref = images.base_ref()
    assert ref.startswith("localhost/metatide-python:3.11-bookworm-")
    assert images.base_ref() == ref, "the same recipe, the same tag"


def test_image_builder_runs_containers_read_only_without_network() -> None:
    args = images.Builder("/usr/bin/podman").container("img", "--help", entrypoint="metatide")
    assert args[:8] == ["run", "--rm", "-i", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
    assert args[-4:] == ["--entrypoint", "metatide", "img", "--help"]
