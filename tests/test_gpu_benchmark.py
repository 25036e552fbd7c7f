"""``benchmarks/gpu.py`` runs where no GPU is: its arguments are checked, a plain run says there is no CUDA and writes
nothing, and ``--smoke`` runs every section in a tiny form on the CPU, so that a change in epochkit's API breaks
this test instead of the rare GPU run. CUDA is hidden from the subprocesses, so this is the CPU path everywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
SECTIONS = ["syncs", "overhead", "copies", "fingerprints", "correctness", "sharded", "init_audit"]

# The checks that must run and pass on the CPU: each one is what would break if epochkit's API or behaviour moved.
CPU_CHECKS = [
    ("syncs", "attribution self-test (synthetic stacks)"),
    ("syncs", "control: the probe's sync seen once per epoch, in on_train_batch_end"),
    ("syncs", "fused/indices: the counter saw the CPU probe in both runs"),
    ("syncs", "fused/fingerprints: the counter saw the CPU probe in both runs"),
    ("syncs", "fused/indices: ShuffleAudit quiet"),
    ("syncs", "fused/fingerprints: ShuffleAudit quiet"),
    ("copies", "WeightReset: verify catches a changed weight, restore undoes it"),
    ("fingerprints", "on-device fingerprints equal the CPU's, for every dtype"),
    ("correctness", "fused AdamW, tensor LRs: LR used == CPU formula, every step and group"),
    ("correctness", "single AdamW, tensor LRs: LR used == CPU formula, every step and group"),
    ("correctness", "control: two runs without the audit are bit-identical"),
    ("correctness", "indices: final weights bit-identical with and without ShuffleAudit (deterministic)"),
    ("correctness", "fingerprints: final weights bit-identical with and without ShuffleAudit (deterministic)"),
    ("sharded", "ModelParallelStrategy: restore_best_weights=True refused at setup, pointing to 'checkpoint'"),
    (
        "sharded",
        "ModelParallelStrategy + fully_shard, restore='checkpoint': EarlyStopping restored the best epoch's weights"
        " (== full state dict saved at epoch 2)",
    ),
    (
        "sharded",
        "ModelParallelStrategy + fully_shard, restore='checkpoint': LRWarmup scaled every param group"
        " (LR used == base * w(k), each step)",
    ),
    ("sharded", "ModelParallelStrategy + fully_shard, restore='checkpoint': ShuffleAudit ran quiet"),
    ("sharded", "ModelParallelStrategy: WeightReset refuses DTensor parameters with a clear error"),
    ("init_audit", "syncs: the counter saw the CPU probe in both runs"),
    ("init_audit", "findings: quiet on the default-initialised conv net (no issue)"),
    ("init_audit", "findings: an all-zero conv net caught (InitAuditError, symmetric_units in 'net.0')"),
    ("init_audit", "sharded: InitAudit refused at setup under ModelParallelStrategy"),
]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def gpu_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script imported as a module (its import sets CUBLAS_WORKSPACE_CONFIG: kept out of this process)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    spec = importlib.util.spec_from_file_location("epochkit_gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sections", "9"], "--sections: '9' is not one of syncs, overhead"),
        (["--sections", "sync"], "--sections: 'sync' is not one of"),
        (["--out", "."], "is a directory; give the path of a JSON file"),
        (["--out", "no/such/dir/x.json"], "does not exist"),
        (["--seed", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_are_refused(
    gpu_script: ModuleType, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_script.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sections_are_chosen_by_name_or_number_in_run_order(gpu_script: ModuleType) -> None:
    assert gpu_script.parse_args(["--sections", "6,copies,1"]).sections == ["syncs", "copies", "sharded"]
    assert gpu_script.parse_args([]).sections == SECTIONS


def test_without_cuda_it_says_so_and_writes_nothing(tmp_path: Path) -> None:
    proc = _run(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA is not available on this machine, so nothing was measured" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_smoke_runs_every_section_on_the_cpu_and_its_checks_pass(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = _run("--smoke", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [out]  # its Lightning runs went to a temporary directory, now gone
    results = json.loads(out.read_text())
    assert results["smoke"] is True and results["cuda"] is False and results["passed"] is True
    assert set(results["versions"]) == {"python", "torch", "cuda", "lightning", "epochkit"}
    assert list(results["sections"]) == SECTIONS
    for name, section in results["sections"].items():
        assert section["status"] == "done", (name, section.get("error"))
        assert section["figures"], name
        assert all(set(f) == {"value", "unit"} for f in section["figures"].values()), name
    checks = {(c["section"], c["name"]): c for c in results["checks"]}
    assert all(set(c) == {"section", "name", "status", "value", "target", "note"} for c in checks.values())
    assert {c["status"] for c in checks.values()} <= {"pass", "n/a"}
    for key in CPU_CHECKS:
        assert key in checks, f"missing check {key}"
        assert checks[key]["status"] == "pass", checks[key]
    # What only a GPU can decide is recorded as not applicable here, never as passed.
    assert checks[("syncs", "fused/indices: syncs epochkit caused in per-batch hooks")]["status"] == "n/a"
    assert checks[("overhead", "indices: median step time all callbacks / none")]["status"] == "n/a"
    assert checks[("copies", "best-weight capture / plain copy into pinned memory")]["status"] == "n/a"
    assert (
        checks[("init_audit", "syncs: host syncs InitAudit caused in per-batch hooks during the first epoch")]["status"]
        == "n/a"
    )
    assert checks[("init_audit", "cost: first epoch with InitAudit / without (the whole check)")]["status"] == "n/a"
    figures = results["sections"]["overhead"]["figures"]
    assert figures["indices: ShuffleAudit.on_train_batch_start host time"]["unit"] == "us/batch"
    assert "ALL CHECKS PASSED" in proc.stdout
