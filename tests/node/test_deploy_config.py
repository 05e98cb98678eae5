"""`tierflow up --config`: a deployment over several machines, simulated here on two loopback addresses."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

import tierflow
from tests.support.processes import tierflow_up
from tierflow.errors import ConfigError
from tierflow.node.deploy_config import DeployConfig
from tierflow.types import Tier

SPANS = "device=0-1,edge=2-3,cloud=4-5"


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct free ports on ``host``: every socket stays bound until all are chosen, so the
    kernel cannot hand the same port out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def layout(tmp_path: Path, **changes: object) -> Path:
    """Host ``phone`` (127.0.0.1) runs the device, host ``box`` (127.0.0.2) the edge and the cloud."""
    hosts = {"phone": "127.0.0.1", "box": "127.0.0.2"}
    phone, box = free_ports(hosts["phone"], 2), free_ports(hosts["box"], 4)
    ports = {"device": phone, "edge": box[:2], "cloud": box[2:]}
    nodes = {
        tier: {"host": host, "data_plane": ports[tier][0], "http": ports[tier][1]}
        for tier, host in (("device", "phone"), ("edge", "box"), ("cloud", "box"))
    }
    data = {"model": "demo-lm", "certs": "pki", "store": "contexts.sqlite", "hosts": hosts, "nodes": nodes,
            "links": {"device-edge": "wifi", "device-cloud": "4g", "edge-cloud": "backhaul"}, "spans": SPANS,
            **changes}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_file_says_which_nodes_run_where_and_how_they_reach_each_other(tmp_path: Path) -> None:
    config = DeployConfig.load(layout(tmp_path))
    assert config.tiers_on("box") == [Tier.CLOUD, Tier.EDGE]  # the cloud first: the edge reaches it
    assert config.tiers_on(None) == [Tier.CLOUD, Tier.EDGE, Tier.DEVICE]
    assert config.certs == tmp_path / "pki" and config.store == str(tmp_path / "contexts.sqlite")
    edge = config.node_args(Tier.EDGE)
    assert edge[edge.index("--listen") + 1].startswith("127.0.0.2:")
    assert f"cloud={config.address(Tier.CLOUD)}" in edge
    device = config.node_args(Tier.DEVICE)
    assert f"edge={config.address(Tier.EDGE)}" in device and "--store" in device
    assert device[device.index("--spans") + 1] == SPANS
    assert "--detector" not in device
    with pytest.raises(ConfigError, match="not one of the file's hosts"):
        config.tiers_on("laptop")


def test_a_node_serves_the_detector_the_file_names_a_file_relative_to_it(tmp_path: Path) -> None:
    nodes = yaml.safe_load(layout(tmp_path).read_text())["nodes"]
    nodes["edge"]["detector"] = "crack-edge"
    nodes["cloud"]["detector"] = "models/cloud-detector.onnx"
    config = DeployConfig.load(layout(tmp_path, nodes=nodes))
    edge, cloud = config.node_args(Tier.EDGE), config.node_args(Tier.CLOUD)
    assert edge[edge.index("--detector") + 1] == "crack-edge"  # a bundled name stays a name
    assert cloud[cloud.index("--detector") + 1] == str(tmp_path / "models" / "cloud-detector.onnx")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hosts": {"phone": "127.0.0.1"}}, r"nodes\.(edge|cloud)\.host: 'box' is not one of hosts"),
        ({"links": {"device-moon": "wifi"}}, "tier-tier"),
        ({"links": {"device-edge": "7g"}}, "7g"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_field(
    tmp_path: Path, changes: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        DeployConfig.load(layout(tmp_path, **changes))


def test_two_nodes_on_one_port_and_a_missing_tier_are_refused(tmp_path: Path) -> None:
    path = layout(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["nodes"]["cloud"]["http"] = data["nodes"]["edge"]["data_plane"]
    path.write_text(yaml.safe_dump(data))
    clash = r"127\.0\.0\.2:\d+ is taken by nodes\.(edge\.data_plane|cloud\.http)"
    with pytest.raises(ConfigError, match=clash):
        DeployConfig.load(path)
    del data["nodes"]["cloud"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="missing: cloud"):
        DeployConfig.load(path)


@contextmanager
def machine(path: Path, name: str, env: dict[str, str]) -> Iterator[dict[str, object]]:
    with tierflow_up(["--config", str(path), "--machine", name, "--image-model", "none"], env) as (info, _):
        yield info


@pytest.mark.slow
def test_two_machines_on_loopback_serve_one_conversation_across_them(tmp_path: Path) -> None:
    path = layout(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIERFLOW_HOME": str(tmp_path / "home")}
    with machine(path, "box", env) as box, machine(path, "phone", env) as phone:
        assert set(box["nodes"]) == {"edge", "cloud"}  # type: ignore[arg-type]
        for tier in ("edge", "cloud"):
            assert box["nodes"][tier]["data_plane"].startswith("127.0.0.2:")  # type: ignore[index]
        assert set(phone["nodes"]) == {"device"}  # type: ignore[arg-type]
        with tierflow.Client(str(phone["api"]), str(phone["api_key"]), timeout=60) as client:
            first = client.generate("def ", max_tokens=8, temperature=0)
            assert first.route.spans == {"device": "0-1", "edge": "2-3", "cloud": "4-5"}
            follow = client.generate("\n", context_id=first.context_id, max_tokens=4, temperature=0)
            assert follow.route.cached_tokens > 0
