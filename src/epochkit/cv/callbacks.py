"""The cross-validator's own per-fold callbacks: thin glue that records, verifies and checkpoints one fold.

They run on every rank (DDP) and write files from global rank 0 only; the driver in the main process reads them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch.utils.data import DataLoader, DistributedSampler, Subset
from typing_extensions import override

from epochkit._distributed import all_ranks, broadcast
from epochkit._io import atomic_path, save_torch_atomic, write_json_atomic
from epochkit._logging import log_text
from epochkit._validation import is_real
from epochkit.cv.data import rebuild_loader
from epochkit.cv.reset import weights_checksum
from epochkit.cv.rng import collect_rng_states, set_rng_states
from epochkit.cv.rows import checked_rows, concat_rows


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar entries of ``trainer.callback_metrics`` as floats; ``x_step`` dropped when ``x_epoch`` exists."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if is_real(value):
            out[name] = float(value)
    # `self.log(..., on_step=True, on_epoch=True)` gives x_step, x_epoch and x (= x_epoch): keep x only.
    return {
        k: v
        for k, v in out.items()
        if not (k.endswith("_step") and f"{k[:-5]}_epoch" in out) and not (k.endswith("_epoch") and k[:-6] in out)
    }


class FoldMonitor(Checkpoint):
    """Checks at setup that every rank runs the same fold on the verified weights, logs the checksum, records every
    epoch's metrics (its state, so a resumed fold keeps its history; written to ``history_path`` at fit end) and, at
    fit end, which epoch's weights the fold keeps to ``kept_path``, with the last validation's metrics when the kept
    weights are exactly those it validated (so the fold need not validate them again).

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass only for the hook order: Lightning runs the
    ``on_train_epoch_end`` of monitoring callbacks (``EarlyStopping``, ``Checkpoint``) after the LightningModule's
    own, so what the module logs there is recorded in the same epoch, not the next.
    """

    STATE_KEY = "epochkit.cv.FoldMonitor"
    history: list[dict[str, Any]]  # every epoch's metrics so far
    kept_epoch: int | None  # the epoch whose weights the fold keeps (set at fit end)
    # What the last validation of the fit logged, when the fold keeps exactly the weights it validated (set at fit
    # end, agreed by every rank): the fold's kept metrics without validating them again.
    kept_metrics: dict[str, float] | None

    def __init__(self, fold: int, plan_hash: str, checksum: str, history_path: str, kept_path: str) -> None:
        self.fold = fold
        self.plan_hash = plan_hash
        self.checksum = checksum
        self.history_path = history_path
        self.kept_path = kept_path
        self._driver_pid = os.getpid()  # the process that reads the results (run_fold's)
        self._reset_state()

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.history = []
        self.kept_epoch = None
        self.kept_metrics = None
        self.ended_here = False  # whether this object saw the fit end (not a copy in a ddp_spawn worker)
        self._validated: tuple[str, dict[str, Any]] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self.STATE_KEY

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_state()
        mine = (self.fold, self.plan_hash)
        same_fold = all_ranks(trainer, tuple(broadcast(trainer, mine)) == mine)
        if not same_fold:
            raise RuntimeError(f"ranks disagree on the fold or the fold plan (rank {trainer.global_rank}: {mine}).")
        actual = weights_checksum(pl_module)
        if not all_ranks(trainer, actual == self.checksum):
            raise RuntimeError(
                f"fold {self.fold} would start from weights with checksum {actual[:12]} on rank "
                f"{trainer.global_rank}, not the reset weights {self.checksum[:12]}."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Text, not scalars: a fold number or a "verified" flag logged once makes a one-point chart.
        log_text(trainer, "cv/weights_checksum", f"fold {self.fold}: `{self.checksum}` (verified on every rank)")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # The weights just validated, by content (a checksum, not tensor version counters: weight-averaging
        # callbacks write through `.data`, which no counter sees), and what this validation logged: what
        # `trainer.validate` would return for them. Once per validation, on the host: no per-step cost.
        self._validated = (weights_checksum(pl_module), dict(trainer._logger_connector.metrics["log"]))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After `on_train_end`, where EarlyStopping restores its best weights: those are what the fold keeps.
        restored = [
            int(epoch)
            for cb in trainer.callbacks  # type: ignore[attr-defined]
            if isinstance(epoch := getattr(cb, "restored_epoch", None), int) and epoch >= 0
        ]
        last = self.history[-1]["epoch"] if self.history else None
        self.kept_epoch = restored[-1] if restored else last
        validated = self._validated
        unchanged = validated is not None and not restored and validated[0] == weights_checksum(pl_module)
        if all_ranks(trainer, unchanged) and validated is not None:
            self.kept_metrics = scalar_metrics(validated[1])
        self._validated = None
        self.ended_here = True
        # Files for the reader only where rank 0 ran in another process (ddp_spawn workers); else it reads this
        # object (each atomic write costs an fsync: about 10 ms on a busy disk).
        if trainer.is_global_zero and os.getpid() != self._driver_pid:
            write_json_atomic(self.history_path, self.history)
            write_json_atomic(
                self.kept_path,
                {"kept_epoch": self.kept_epoch, "epochs": len(self.history), "kept_metrics": self.kept_metrics},
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = {
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "metrics": scalar_metrics(dict(trainer.callback_metrics)),
        }
        self.history.append(record)  # written to history_path at fit end (in the checkpointed state meanwhile)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The fold, plan and start weights: a resume checkpoint is refused for any other fold (cv/fold.py).
        return {
            "fold": self.fold,
            "plan_hash": self.plan_hash,
            "checksum": self.checksum,
            "history": list(self.history),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class ResumeCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` (atomically) after every training epoch, so an interrupted fold resumes where it was.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning orders it after the user's ``ModelCheckpoint``
    and the saved file holds their updated state. It is appended to a built Trainer, so it never replaces
    Lightning's default ``ModelCheckpoint``.
    """

    rng_to_restore_: dict[str, Any] | None  # the RNG states a resumed fold continues from (applied at fit start)

    def __init__(self, path: str) -> None:
        self.path = path
        self._reset_state()

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.rng_to_restore_ = None

    @property
    @override
    def state_key(self) -> str:
        return "epochkit.cv.ResumeCheckpoint"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # load_state_dict (a resumed fold) runs after setup
            self._reset_state()

    @override
    def state_dict(self) -> dict[str, Any]:
        # The global RNGs as the next epoch will find them: a shuffling train loader draws its order (and its
        # workers' base seed) from them, so a resumed fold must continue their streams, not restart them.
        return {"rng": collect_rng_states()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rng_to_restore_ = state_dict.get("rng")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last hook before a resumed fit creates its train iterator (the sanity check in between runs under
        # Lightning's `isolate_rng`); `load_state_dict` runs earlier, before the strategy and module setup.
        if self.rng_to_restore_ is not None:
            set_rng_states(self.rng_to_restore_)
            self.rng_to_restore_ = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        target = Path(self.path)
        # weights_only=False said explicitly: the optimizer, loops and callbacks are what a resume needs, and left
        # unset Lightning logs "`weights_only` was not set, defaulting to `False`." at every epoch of every fold.
        if not trainer.is_global_zero:
            trainer.save_checkpoint(target, weights_only=False)  # a collective: every rank enters; rank 0 writes
            return
        with atomic_path(target) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
        write_json_atomic(target.with_suffix(".json"), {"global_step": int(trainer.global_step)})


def _batch_sizes_in_order(loader: DataLoader, n: int) -> list[int]:
    """The batch sizes of a loader that visits the positions ``0 .. n-1`` of its dataset in order; else an error."""
    if loader.batch_sampler is None:
        raise ValueError(
            "out-of-fold predictions need a batched predict loader; `cv_dataloader(dataset, 'predict')` returned "
            "one without a batch size or batch sampler."
        )
    batches = [list(batch) for batch in loader.batch_sampler]
    order = [int(i) for batch in batches for i in batch]
    if len(loader.dataset) != n or order != list(range(n)):  # type: ignore[arg-type]
        raise ValueError(
            "out-of-fold predictions need `cv_dataloader(dataset, 'predict')` to visit every sample of the given "
            f"dataset once, in order (got {len(order)} positions of {n}, starting {order[:5]}); return a loader "
            "with a sequential sampler for 'predict', or use `predict=False`."
        )
    return [len(batch) for batch in batches]


class OOFPredictor(Callback):
    """Runs ``predict_step`` over the fold's validation subset at the end of fit, on the fold's final weights.

    Inside the fit, so a spawned DDP fit needs no second launch. Each rank predicts its ``DistributedSampler``
    share (padded to equal length, as Lightning's would be) and writes ``oof_rank{r}.pt`` with each prediction's
    position in the validation subset; the driver merges the files and drops the padding by index.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    @property
    @override
    def state_key(self) -> str:
        return "epochkit.cv.OOFPredictor"

    @staticmethod
    def _user_builds_loaders(trainer: pl.Trainer) -> bool:
        user_dm = getattr(getattr(trainer, "datamodule", None), "datamodule", None)
        return callable(getattr(user_dm, "cv_dataloader", None))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Checked before the fold trains (the same on every rank: world_size is). A loader from the user's
        # `cv_dataloader` cannot be split across ranks without knowing its sampler.
        if stage == "fit" and trainer.world_size > 1 and self._user_builds_loaders(trainer):
            raise ValueError(
                "out-of-fold predictions on several devices need the fold loaders CrossValidator builds, but the "
                "DataModule has a `cv_dataloader(dataset, stage)` method; use `predict=False` (and predict with "
                "the fold models afterwards), or train on one device."
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        fold_data: Any = getattr(trainer, "datamodule")  # noqa: B009  (untyped property)
        template = fold_data.predict_dataloader()
        if self._user_builds_loaders(trainer):
            # One device (setup checked): the user's predict loader as it is, if it visits the subset in order.
            loader, sizes = template, _batch_sizes_in_order(template, len(fold_data.val_subset))
            positions = list(range(len(fold_data.val_subset)))
        else:
            subset = template.dataset
            positions = list(range(len(subset)))
            if trainer.world_size > 1:
                sampler: DistributedSampler[Any] = DistributedSampler(
                    subset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
                )
                positions = list(sampler)
            loader = rebuild_loader(template, Subset(subset, positions), train=False)
            if loader.batch_size is None:
                raise ValueError("out-of-fold predictions need a batched validation loader (`batch_size` is None).")
            size = loader.batch_size
            sizes = [min(size, len(positions) - start_row) for start_row in range(0, len(positions), size)]
        takes_index = is_param_in_hook_signature(pl_module.predict_step, "batch_idx", min_args=2)
        parts: list[Any] = []
        training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.predict_step_context():
                for batch_idx, batch in enumerate(loader):
                    batch = trainer.strategy.batch_to_device(batch)
                    out = pl_module.predict_step(batch, batch_idx) if takes_index else pl_module.predict_step(batch)
                    parts.append(checked_rows(out, sizes[batch_idx]))
        finally:
            pl_module.train(training)
        payload = {  # tensors and plain types only: the driver loads it with weights_only=True
            "positions": torch.as_tensor(positions, dtype=torch.int64),
            "predictions": concat_rows(parts) if parts else None,
            "seconds": time.perf_counter() - start,
        }
        save_torch_atomic(payload, Path(self.out_dir) / f"oof_rank{trainer.global_rank}.pt")
        trainer.strategy.barrier("epochkit.cv.oof")  # every rank's file exists before the driver reads them
