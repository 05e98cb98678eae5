"""The loader's cloud proxy: a machine that fits no target runs the package on the cloud node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.packages import compile_bundled
from tierflow.engine.cloud_proxy import CloudEndpoint
from tierflow.engine.load import load
from tierflow.errors import ModelNotFoundError, ProxyUnavailableError, TierUnavailableError
from tierflow.node.launch import NodeProcess, start_node
from tierflow.runtime.capabilities import Capabilities
from tierflow.runtime.lm import GenerationResult, SamplingConfig
from tierflow.runtime.loader import ImageProxy, TextProxy, TextSession
from tierflow.transport.certs import init_pki
from tierflow.types import ModelKind

pytestmark = pytest.mark.slow

# a machine too small for any target of the package
TINY = Capabilities(memory_total_bytes=64 * 1024 * 1024, cpu_cores=1)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("demo-lm", tmp_path_factory.mktemp("pkg") / "lm.tfm")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, package: Path) -> Iterator[tuple[NodeProcess, Path]]:
    certs = tmp_path_factory.mktemp("pki") / "pki"
    init_pki(certs, ["device", "cloud"])
    node = start_node("cloud", package, certs)
    yield node, certs
    node.stop()


def test_tiny_machine_gets_a_proxy_that_runs_on_the_cloud_node(
    package: Path, cloud: tuple[NodeProcess, Path]
) -> None:
    node, certs = cloud
    proxy = load(package, capabilities=TINY, cloud=CloudEndpoint(address=node.data_plane, certs=certs))
    assert isinstance(proxy, TextProxy) and proxy.kind is ModelKind.CAUSAL_LM
    remote = proxy.generate("The for statement", SamplingConfig.greedy(12))
    local = load(package, target="cloud", threads=1)
    assert isinstance(local, TextSession)
    here = local.generate("The for statement", SamplingConfig.greedy(12))
    assert isinstance(remote, GenerationResult) and isinstance(here, GenerationResult)
    assert remote.new_ids == here.new_ids  # the same greedy tokens: the same cloud artifact ran there
    # every sampling option travels: the same seed samples the same tokens there and here
    sampled = proxy.generate("The for statement", max_new_tokens=12, seed=5, repeat_penalty=1.3, top_k=7)
    assert sampled.new_ids == local.generate("The for statement", max_new_tokens=12, seed=5,
                                             repeat_penalty=1.3, top_k=7).new_ids
    assert remote.text == here.text
    assert remote.provider.startswith("remote:cloud")


def test_a_proxy_without_a_cloud_node_says_how_to_configure_one(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERFLOW_CLOUD", raising=False)
    proxy = load(package, capabilities=TINY)
    with pytest.raises(ProxyUnavailableError, match="TIERFLOW_CLOUD"):
        proxy.generate("hello")


def test_a_cloud_node_serving_another_model_is_refused(
    package: Path, cloud: tuple[NodeProcess, Path]
) -> None:
    _, certs = cloud
    edge = start_node("cloud", package, certs, target_override="edge")
    try:
        proxy = load(package, capabilities=TINY, cloud=CloudEndpoint(address=edge.data_plane, certs=certs))
        with pytest.raises(ModelNotFoundError, match="serves model"):
            proxy.generate("hello", max_new_tokens=2)
    finally:
        edge.stop()


def test_an_unreachable_cloud_node_is_a_recoverable_error(
    package: Path, cloud: tuple[NodeProcess, Path]
) -> None:
    _, certs = cloud
    proxy = load(package, capabilities=TINY, cloud=CloudEndpoint(address="127.0.0.1:9", certs=certs))
    with pytest.raises(TierUnavailableError, match="unreachable"):
        proxy.generate("hello", max_new_tokens=2)


def test_proxy_run_returns_every_output_of_the_cloud_artifact(
    package: Path, cloud: tuple[NodeProcess, Path]
) -> None:
    import numpy as np

    node, certs = cloud
    proxy = load(package, capabilities=TINY, cloud=CloudEndpoint(address=node.data_plane, certs=certs))
    local = load(package, target="cloud", threads=1)
    assert isinstance(local, TextSession)
    sig = local.lm.signature
    empty = np.zeros((1, sig.kv_heads, 0, sig.head_dim), np.float32)
    feeds = {"input_ids": np.array([[5, 6, 7]], np.int64), "position_ids": np.array([[0, 1, 2]], np.int64)}
    feeds |= {f"past_key_values.{i}.{k}": empty for i in range(sig.num_layers) for k in ("key", "value")}
    remote = proxy.run(feeds)
    here = local.run(feeds)
    assert set(remote) == set(here)
    np.testing.assert_allclose(remote["logits"], here["logits"], rtol=1e-5, atol=1e-5)


def test_proxy_paints_the_same_image_as_the_local_cloud_target(
    tmp_path_factory: pytest.TempPathFactory, cloud: tuple[NodeProcess, Path]
) -> None:
    import numpy as np

    from tierflow.errors import InvalidInputError
    from tierflow.runtime.image import ImageResult

    _, certs = cloud
    package = compile_bundled("random-image", tmp_path_factory.mktemp("img") / "image.tfm")
    node = start_node("cloud", package, certs)
    try:
        proxy = load(package, capabilities=TINY, cloud=CloudEndpoint(address=node.data_plane, certs=certs))
        assert isinstance(proxy, ImageProxy) and proxy.kind is ModelKind.IMAGE_GENERATOR
        remote = proxy.generate("a red car", resolution=128, seed=3)
        cloud = load(package, target="cloud", threads=1)
        assert cloud.kind is ModelKind.IMAGE_GENERATOR
        local = cloud.generate("a red car", resolution=128, seed=3)
        assert isinstance(remote, ImageResult) and isinstance(local, ImageResult)
        assert remote.refined and remote.provider == "remote:cloud"
        np.testing.assert_array_equal(remote.pixels, local.pixels)
        with pytest.raises(InvalidInputError, match="tier 'cloud': resolution 13"):
            proxy.generate("a red car", resolution=13)
    finally:
        node.stop()
