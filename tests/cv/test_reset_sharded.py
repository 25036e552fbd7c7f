"""WeightReset on a module sharded with FSDP2's ``fully_shard`` (DTensor parameters), on one CPU process (gloo)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from epochkit.cv.reset import WeightReset, WeightResetError, weights_checksum


@pytest.fixture
def sharded() -> Iterator[tuple[nn.Module, nn.Module]]:
    """(a plain copy, the same module sharded with fully_shard) inside a one-process gloo group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        module.load_state_dict(plain.state_dict())
        mesh = init_device_mesh("cpu", (1,))
        fully_shard(module[0], mesh=mesh)
        fully_shard(module, mesh=mesh)
        yield plain, module
    finally:
        dist.destroy_process_group()


def test_snapshot_verify_and_checksum_of_a_sharded_module_fail_clearly(sharded: tuple[nn.Module, nn.Module]) -> None:
    _, module = sharded
    for call in (WeightReset().snapshot, weights_checksum):
        with pytest.raises(WeightResetError, match=r"sharded \(DTensor\) parameters or buffers \['0.weight'"):
            call(module)


def test_restoring_a_plain_snapshot_into_the_sharded_module_fails_before_any_copy(
    sharded: tuple[nn.Module, nn.Module],
) -> None:
    plain, module = sharded
    reset = WeightReset()
    reset.snapshot(plain)  # taken before sharding, as the message advises
    before = module[0].weight.full_tensor().clone()
    with pytest.raises(WeightResetError, match=r"before it is sharded \(before fit, which runs configure_model\)"):
        reset.restore(module)
    assert torch.equal(module[0].weight.full_tensor(), before)
