"""Shared fixtures of the integration tests: a gateway running in-process on loopback."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# The tests import their client as `tests.integration.sipclient` (tests/ is a package, so
# that is also the name mypy gives it). `python -m pytest` from the repository root has the
# root on sys.path already; a bare `pytest`, or one started elsewhere, needs it added.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.integration.netns import (  # noqa: E402
    EdgeTopology,
    Topology,
    edge_topology,
    root_skip_reason,
)
from tests.integration.sipclient import (  # noqa: E402
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    running_gateway,
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: the control socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="egw-") as name:
        yield Path(name)


@pytest.fixture
async def trunk() -> AsyncIterator[UdpPeer]:
    """The carrier trunk's address: a UDP socket the test listens on."""
    peer = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    """Override in a test module to run the gateway with other settings."""
    return GatewaySettings()


@pytest.fixture
async def gw(
    short_tmp: Path, trunk: UdpPeer, gateway_settings: GatewaySettings
) -> AsyncIterator[GatewayUnderTest]:
    async with running_gateway(short_tmp / "var", trunk.local[1], gateway_settings) as under_test:
        yield under_test


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Network namespaces for one test, all removed when it ends (skips unless root)."""
    reason = root_skip_reason()
    if reason is not None:
        print(reason)
        pytest.skip(reason)
    with Topology() as made:
        yield made


@pytest.fixture
def edge(topology: Topology) -> EdgeTopology:
    """The gateway's namespace G linked to an app namespace A and a carrier namespace C."""
    return edge_topology(topology)
