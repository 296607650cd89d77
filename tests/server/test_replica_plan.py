"""The Ray-free parts of ``serve --replicas``: what each replica reserves, the missing-extra error, --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rocmforge.errors import RocmforgeError
from rocmforge.server.replica import ReplicaOptions
from rocmforge.server.replicas import deployment_options, import_ray, plan_for


def test_cpu_replicas_take_a_cpu_slice_gpu_replicas_a_whole_gpu():
    assert plan_for("cpu", 2, 0.5, cluster_gpus=8).needs() == {"CPU": 1.0, "GPU": 0.0}
    assert plan_for("gpu", 4, 1.0, cluster_gpus=0).needs() == {"CPU": 4.0, "GPU": 4.0}
    assert plan_for("auto", 2, 1.0, cluster_gpus=2).num_gpus == 1
    assert plan_for("auto", 2, 1.0, cluster_gpus=0).num_gpus == 0


def test_shortfall_names_what_is_missing():
    plan = plan_for("gpu", 4, 2.0, cluster_gpus=2)
    assert plan.shortfall({"CPU": 16.0, "GPU": 4.0}) == []
    assert plan.shortfall({"CPU": 6.0, "GPU": 2.0}) == ["8 CPU (the cluster has 6)", "4 GPU (the cluster has 2)"]


def test_deployment_options(monkeypatch):
    monkeypatch.delenv("ROCMFORGE_BLAS_THREADS", raising=False)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")            # the user's own setting wins
    opts = deployment_options(plan_for("cpu", 3, 2.0, 0), ReplicaOptions("m", engine_kwargs={"max_num_seqs": 24}))
    assert opts["num_replicas"] == 3 and opts["max_ongoing_requests"] == 24
    actor = opts["ray_actor_options"]
    assert (actor["num_cpus"], actor["num_gpus"]) == (2.0, 0)
    assert actor["runtime_env"]["env_vars"] == {"ROCMFORGE_BLAS_THREADS": "2", "NUMBA_NUM_THREADS": "3"}


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)           # import ray now raises ImportError
    with pytest.raises(RocmforgeError, match=r"pip install 'rocmforge\[ray\]'"):
        import_ray()


def test_help_teaches_replicas():
    out = subprocess.run([sys.executable, "-m", "rocmforge", "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("--replicas", "--ray-address", "--replica-cpus", "x-rocmforge-replica", "rocmforge[ray]"):
        assert word in out, word
