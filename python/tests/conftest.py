"""Fixtures: real local clusters (tessera-server processes on 127.0.0.1, free ports)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tessera  # noqa: E402
import tessera.testing  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two static shards (connect with servers=)."""
    with tessera.testing.LocalCluster(num_servers=2,
                                      log_dir=str(tmp_path_factory.mktemp("logs"))) as c:
        yield c


@pytest.fixture(scope="module")
def coordinated(tmp_path_factory):
    """A coordinator and two unreplicated shards (clients and worker clocks use it)."""
    with tessera.testing.LocalCluster(num_servers=2, replication=1,
                                      log_dir=str(tmp_path_factory.mktemp("logs"))) as c:
        yield c


@pytest.fixture
def client(cluster):
    with tessera.Client(servers=cluster.addresses) as c:
        yield c


@pytest.fixture
def table_name(request):
    """A table name unique to the test."""
    return request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:100]
