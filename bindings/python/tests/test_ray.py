"""Ray Data batch inference on a local two-node cluster (one CPU each, actors at half a CPU so
that the read tasks keep a CPU), talking over loopback only: the test runs itself again in a
fresh network namespace whose only interface is `lo` (`unshare -rn`), so Ray cannot register
or reach any other address. Every wait is bounded. The parquet must equal direct model calls
image by image."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DIGITS, IMAGES, REPO

# Set by the outer test for the run inside the namespace (never recurse).
INSIDE = os.environ.get("CNX_TEST_LOOPBACK_NAMESPACE") == "1"
JOB_TIMEOUT_S = 300


@pytest.mark.skipif(INSIDE, reason="already inside the loopback-only namespace")
def test_ray_job_in_a_loopback_only_namespace():
    # pytest again, on this file, inside new user, network and PID namespaces with `lo` up:
    # when the shell (PID 1 there) ends, or is killed on the timeout, the kernel ends every
    # process left in the namespace (Ray's daemons included).
    command = 'ip link set lo up && "$0" -m pytest -q -p no:cacheprovider "$1"'
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", CNX_TEST_LOOPBACK_NAMESPACE="1")
    result = subprocess.run(["unshare", "-rn", "--pid", "--fork", "--mount-proc", "sh", "-c",
                             command, sys.executable, __file__],
                            cwd=Path(__file__).parent, env=env, capture_output=True, text=True,
                            timeout=JOB_TIMEOUT_S)
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "1 passed" in result.stdout


@pytest.mark.skipif(not INSIDE, reason="runs inside the loopback-only namespace")
def test_parquet_equals_direct_model_calls(tmp_path):
    # The interfaces of this process's network namespace (netlink; /sys/class/net would show
    # the namespace that mounted /sys).
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    import cnx

    sys.path.insert(0, str(REPO / "examples" / "python"))
    import ray_embed

    # Four held-out digits of each class (PNG: PIL and cnx decode them to the same pixels).
    clean = tmp_path / "clean"
    for digit in range(10):
        for path in sorted((DIGITS / "held-out" / str(digit)).iterdir())[:4]:
            (clean / str(digit)).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, clean / str(digit) / path.name)
    with_bad = tmp_path / "with-bad"
    shutil.copytree(clean, with_bad)
    shutil.copy(IMAGES / "truncated.png", with_bad / "truncated.png")

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert ray.cluster_resources()["CPU"] == 2
        ray.data.DataContext.get_current().enable_progress_bars = False

        model = cnx.ConvNextV2ForImageClassification.from_pretrained(DIGITS, threads=1)
        for reader, folder in (("images", clean), ("binary", with_bad)):
            out = tmp_path / f"out-{reader}"
            # Read tasks at half a CPU too: with one actor on each node, a whole-CPU read task
            # would fit on neither.
            rows = ray_embed.embed_folder(str(DIGITS), str(folder), str(out), reader=reader,
                                          actors=2, cpus_per_actor=0.5, read_cpus=0.5,
                                          batch_size=8)
            table = pq.read_table(out).sort_by("path").to_pydict()
            assert rows == len(table["path"])
            paths = sorted(str(p) for p in folder.rglob("*.png"))
            assert table["path"] == paths, reader
            for i, path in enumerate(paths):
                if path.endswith("truncated.png"):
                    assert table["label"][i] is None and table["embedding"][i] is None
                    assert table["error"][i], "the unreadable file's row says why"
                    continue
                top = model.classify(path, top_k=1)[0]
                assert (table["label"][i], table["score"][i]) == (top["label"], top["score"]), path
                embedding = np.asarray(table["embedding"][i], np.float32)
                assert np.array_equal(embedding, model.embed(path)[0]), path
                assert table["error"][i] is None
        ray.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
