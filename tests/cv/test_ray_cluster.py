"""CrossValidator on a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head node and a
worker node, one CPU each): the folds really run on both nodes, the driver joins the cluster through
``RAY_ADDRESS`` as a user's script would, and the results equal the sequential run's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from epochkit import CrossValidator
from epochkit.cv import CVResult, RayExecutor
from tests.helpers import QUIET, RegressionDataModule, RegressionModule
from tests.helpers.ray import two_node_cluster

pytestmark = pytest.mark.processes  # a cluster of Ray processes

KWARGS: dict[str, Any] = {**QUIET, "logger": True, "enable_checkpointing": True, "max_epochs": 3, "deterministic": True}


def _nan_equal(a: Any, b: Any) -> bool:
    """Equal, NaN included (an aggregate over folds that lack a metric is NaN, and NaN != NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _fit(root: Path, executor: RayExecutor | None = None) -> CVResult:
    torch.manual_seed(0)
    cv = CrossValidator(4, root_dir=root, verbose=False, executor=executor)
    return cv.fit(RegressionModule(), RegressionDataModule(num_samples=32, batch_size=8), trainer_kwargs=KWARGS)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with two_node_cluster() as cluster:
        yield cluster


def test_folds_run_on_both_nodes_and_equal_the_sequential_run(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    sequential = _fit(tmp_path / "sequential")
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    result = _fit(tmp_path / "cv", RayExecutor(progress=False))
    assert not ray.is_initialized()  # the executor connected for the fit and disconnected after it

    nodes = {f.worker["node_id"] for f in result.folds}
    assert nodes == {node.node_id for node in [cluster.head_node, *cluster.worker_nodes]}, nodes
    for a, b in zip(result.folds, sequential.folds, strict=True):
        assert a.last == b.last and a.kept == b.kept and a.history == b.history and a.best == b.best
        torch.testing.assert_close(torch.load(a.model_path), torch.load(b.model_path), rtol=0, atol=0)
    assert np.array_equal(result.oof_index, np.arange(32))
    assert torch.equal(result.oof_predictions, sequential.oof_predictions)
    assert _nan_equal(result.aggregate(), sequential.aggregate())
