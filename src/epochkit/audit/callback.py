"""The ``ShuffleAudit`` callback: thin Lightning glue around :mod:`.recording`, :mod:`.verdicts`, :mod:`.findings`,
:mod:`.images` and :mod:`.digests`."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from epochkit import _distributed, _logging
from epochkit._callback import cached_state_key, hook_process_dataloader, unhook_process_dataloader
from epochkit._io import write_bytes_atomic, write_json_atomic
from epochkit._state import Schema, check_state, integer, list_of, mapping, mapping_of, optional, remember_source
from epochkit._validation import check_bool, check_choice, check_int, is_int
from epochkit.audit import images as img
from epochkit.audit.digests import digest_lines
from epochkit.audit.findings import (
    CATALOG,
    LABEL_CODES,
    NOTICES,
    ORDER_CODES,
    SINGLE_LOADER,
    EpochVerdict,
    Finding,
    markdown_report,
    summary,
)
from epochkit.audit.payload import EpochPayload, LoaderConfig, Record
from epochkit.audit.recording import (
    RecordingSampler,
    attach,
    describe_loader,
    detach,
    extract,
    fingerprint,
    sub_batch,
    train_loaders,
)
from epochkit.audit.resume import (
    cut_part,
    earlier_digests,
    judge_cut_epoch,
    judge_replayed_epoch,
    pack_partial,
    unpack_partial,
)
from epochkit.audit.verdicts import epoch_payload, judge_epoch, judge_fit_start, judge_reload

log = logging.getLogger("epochkit.audit")

OnIssue = Literal["warn", "raise", "log"]
REPORT_FILE = "shuffle_audit.json"
DIGEST_FILE = "shuffle_audit_digests.txt"
#: Findings ``overfit_batches`` produces on purpose (it replays the same sequential batches).
_INTENDED_BY_OVERFIT = frozenset({"shuffle_off", *ORDER_CODES})
#: Findings a replay after a resume explains: reported as notes under ``resume_replayed``, which names the cause.
_EXPLAINED_BY_RESUME = frozenset({*ORDER_CODES, "duplicate_samples", "incomplete_coverage", "rank_overlap"})
#: Packages whose frames a warning skips, so that it points at the user's line (``trainer.fit(...)``).
_INTERNAL: tuple[str, ...] = tuple(
    os.path.dirname(os.path.abspath(str(module.__file__))) + os.sep
    for name in ("epochkit", "lightning", "pytorch_lightning", "lightning_fabric", "torch")
    if (module := sys.modules.get(name)) is not None and getattr(module, "__file__", None)
)


class ShuffleAuditWarning(UserWarning):
    """Issued for each issue the audit finds when ``on_issue="warn"`` (once per finding and loader in a fit)."""


class ShuffleAuditError(RuntimeError):
    """Raised on every rank when ``on_issue="raise"`` and the audit found an issue.

    Attributes:
        findings: The issues found.
    """

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("\n".join(f.message() for f in findings))
        self.findings = findings


def _is_key(value: Any) -> bool:
    return isinstance(value, str) or is_int(value)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside epochkit, Lightning and torch (the user's ``fit`` call)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_INTERNAL) and "<frozen" not in path:
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 1


@dataclass
class _Loader:
    """One train loader of the fit, as the audit follows it."""

    name: str | None
    path: tuple[Any, ...]
    loader: Any
    recorder: RecordingSampler | None = None
    labels_array: np.ndarray | None = None
    first_pass: int | None = None  # batches of one pass of an iterable loader among several (cycled ones repeat)
    source: str = ""  # where the ids of a loader without sampler indices come from
    ids: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    label_problem: str | None = None  # labels from a key or function that do not match the samples, this epoch

    @property
    def key(self) -> str:
        return self.name if self.name is not None else SINGLE_LOADER


# What a checkpoint's ShuffleAudit state must hold (epochkit._state): checked when it is loaded, not when it is used.
_STATE_SCHEMA: Schema = {
    "verdicts": (list_of(mapping), "a list of verdict objects"),
    "previous": (optional(mapping_of(mapping)), "a mapping of loaders to order records"),
    "previous_epoch": (optional(lambda v: integer(0)(v) or mapping_of(integer(0))(v)), "epochs (ints >= 0) by loader"),
    "fit_start": (optional(mapping), "a verdict object or None"),
}


class ShuffleAudit(Callback):
    """Records which samples every training epoch really presented, in which order, and flags what a fresh shuffle
    would not do: shuffling off, ranks disagreeing, duplicates, missed samples, overlap between ranks, an order or
    batches that came back, and sorted or class-blocked labels; streams and custom samplers that reshuffle only
    locally by design get notices that measure how weakly they mix.

    Every train loader is audited on its own (each loader of a ``CombinedLoader``, by its key), and a loader swapped
    in by ``reload_dataloaders_every_n_epochs`` is described again and judged from its first epoch. Sample identities
    come from the train sampler's indices (recorded in the main process, with workers too), else from
    ``sample_ids``, else from content fingerprints computed on the batch's device. Observation never changes
    training: no extra sampler iteration, no RNG draw, no host synchronisation per batch.

    Args:
        on_issue: ``"warn"`` (a :class:`ShuffleAuditWarning` per issue, once per finding and loader), ``"raise"`` (a
            :class:`ShuffleAuditError` on every rank at the end of the epoch an issue is found in, or at fit start),
            or ``"log"`` (Python logging only, ``epochkit.audit`` logger). Notices are logged (INFO) through
            Lightning's rank-zero logger, which prints to the console by default, once per notice and loader in a
            fit; so is the fit's one-line summary at its end. A finding seen again in a later epoch goes to the
            ``epochkit.audit`` logger only.
        labels: Where labels come from, to check for sorted or class-blocked data: a sequence indexed by dataset
            index, an ``int``/``str`` key into the batch (``batch[key]``, per loader of several), or a function of
            the batch. Default: the dataset's ``targets`` when present.
        sample_ids: An ``int``/``str`` key into the batch or a function of the batch giving one id per sample,
            used when the data set has no sampler indices (an ``IterableDataset``).
        fingerprints: Whether to fall back to content fingerprints when there are neither indices nor ids.
        max_samples: Compare at most about this many samples across ranks and epochs (a fixed pseudo-random
            subset of sample ids, the same on every rank and epoch; each kept sample keeps its true position, batch
            and successor). Per-rank coverage, duplicates and order digests stay exact; label runs are measured on
            every k-th whole batch; thresholds use the sizes actually measured. The default keeps the epoch-end work
            under 2 s and 400 MB at 10 million samples. None: everything.
        ignore: Finding codes not to report (see :data:`epochkit.audit.findings.CATALOG`).
        escalate: Notice codes to report as issues (``weak_mixing``, ``correlated_batches``, ``iterable_workers``).
        images: Whether to log an order map and a label map per loader and epoch to TensorBoard (when the Trainer
            has a TensorBoard logger): ``True`` draws them as plots with axes, a colour legend and a title with the
            epoch and the verdict when matplotlib is installed (``pip install epochkit[plot]``), else as the raw
            maps (:mod:`epochkit.audit.images`); ``"plot"`` requires matplotlib; ``"raw"`` always logs the raw
            maps (one pixel block per cell, for reading back); ``False`` logs none.

    Example:
        A shuffled loader passes; the same loader unshuffled fails the fit (``on_issue="raise"``):

        >>> import tempfile
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from epochkit.demo import DigitsClassifier
        >>> data = TensorDataset(torch.randn(64, 64), torch.randint(0, 10, (64,)))
        >>> def fit(shuffle: bool) -> ShuffleAudit:
        ...     audit = ShuffleAudit(on_issue="raise")
        ...     with tempfile.TemporaryDirectory() as root:
        ...         trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
        ...                              enable_progress_bar=False, enable_model_summary=False,
        ...                              default_root_dir=root, callbacks=[audit])
        ...         trainer.fit(DigitsClassifier(), DataLoader(data, batch_size=16, shuffle=shuffle))
        ...     return audit
        >>> audit = fit(shuffle=True)
        >>> [(v.epoch, v.metrics["coverage"], v.issues) for v in audit.verdicts_]
        [(0, 1.0, []), (1, 1.0, [])]
        >>> fit(shuffle=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        epochkit.audit.callback.ShuffleAuditError: ...shuffle_off...
    """

    # State made during fit (skorch's trailing underscore), declared for type checkers.
    verdicts_: list[EpochVerdict]
    fit_start_: EpochVerdict | None
    previous_: dict[str, Record]
    previous_epoch_: dict[str, int]
    configs_: dict[str, list[LoaderConfig]]
    _loaders_: list[_Loader]
    _attached_: dict[int, tuple[DataLoader, RecordingSampler | None]]
    _explained_: dict[str, str]
    _causes_: dict[str, dict[str, str]]
    _pending_: EpochVerdict | None
    _announced_: set[tuple[str | None, str]]
    _report_dir_: Path | None
    _steps_: int
    _patched_: tuple[Any, Any] | None
    _overfit_codes_: frozenset[str]
    _fingerprint_tables_: dict[tuple[int, str], torch.Tensor]  # fingerprint multipliers on device, for one fit
    _partial_: dict[str, tuple[int, np.ndarray, np.ndarray]]  # the cut epoch's part before the checkpoint, by loader
    _partial_ranks_: dict[int, dict[str, tuple[int, np.ndarray, np.ndarray]]]  # as loaded: every rank's, by rank
    _partial_world_: int | None  # the ranks whose parts the loaded checkpoint holds (None: it holds none)
    _before_all_: dict[str, np.ndarray]  # every rank's part before the checkpoint, by loader (what counts as seen)
    _unjudged_: str | None  # why the cut epoch cannot be judged whole (None: it can, or no epoch was cut)
    _epoch_open_: bool  # an epoch is under way (a checkpoint now cuts it)
    _resumed_at_: int | None  # the epoch this fit resumed at (None: not resumed)
    _cut_epoch_: int | None  # the epoch this fit resumed in the middle of
    _world_: int
    _epoch_now_: int

    def __init__(
        self,
        on_issue: OnIssue = "warn",
        labels: int | str | Callable[[Any], Any] | Sequence[int] | None = None,
        sample_ids: int | str | Callable[[Any], Any] | None = None,
        fingerprints: bool = True,
        max_samples: int | None = 1_000_000,
        ignore: Sequence[str] = (),
        escalate: Sequence[str] = (),
        images: bool | Literal["plot", "raw"] = True,
    ) -> None:
        check_choice("ShuffleAudit", "on_issue", on_issue, ("warn", "raise", "log"))
        if isinstance(labels, Mapping) or not (
            labels is None or _is_key(labels) or callable(labels) or hasattr(labels, "__len__")
        ):
            raise TypeError(
                f"ShuffleAudit(labels={labels!r}): must be a sequence of labels, an int/str batch key, "
                "a function of the batch, or None."
            )
        if not (sample_ids is None or _is_key(sample_ids) or callable(sample_ids)) or sample_ids == "":
            raise TypeError(
                f"ShuffleAudit(sample_ids={sample_ids!r}): must be an int/str batch key, a function of the batch, "
                "or None."
            )
        if max_samples is not None:
            check_int("ShuffleAudit", "max_samples", max_samples, minimum=100)
        check_bool("ShuffleAudit", "fingerprints", fingerprints)
        check_choice("ShuffleAudit", "images", images, (True, False, "plot", "raw"))
        for name, codes, allowed in (("ignore", ignore, sorted(CATALOG)), ("escalate", escalate, sorted(NOTICES))):
            if isinstance(codes, str):
                raise TypeError(
                    f"ShuffleAudit({name}={codes!r}): must be a sequence of finding codes, not a str; "
                    f"e.g. {name}=[{codes!r}]."
                )
            unknown = [code for code in codes if code not in allowed]
            if unknown:
                what = "notice codes" if name == "escalate" else "finding codes"
                raise ValueError(f"ShuffleAudit({name}={codes!r}): unknown {what} {unknown}; allowed: {allowed}.")
        self.on_issue = on_issue
        self.labels = labels
        self.sample_ids = sample_ids
        self.fingerprints = fingerprints
        self.max_samples = max_samples
        self.ignore = ignore
        self.escalate = escalate
        self.images = images
        self._reset_state()

    # ----------------------------------------------------------------------------------------------- identity

    @property
    @override
    def state_key(self) -> str:
        ids = self.sample_ids if not callable(self.sample_ids) else getattr(self.sample_ids, "__qualname__", "fn")
        return cached_state_key(self, max_samples=self.max_samples, sample_ids=ids)

    # ------------------------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_state()
        if self.images == "plot" and not img.can_plot():
            raise ImportError("ShuffleAudit(images='plot') needs matplotlib: `pip install epochkit[plot]`.")
        # The recorder goes in where each train loader is made, before its first iteration: one per train loader.
        self._patched_ = hook_process_dataloader(trainer, self._attach)

    def _attach(self, loader: object) -> None:
        if isinstance(loader, DataLoader) and id(loader) not in self._attached_:
            self._attached_[id(loader)] = (loader, attach(loader))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._undo()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown when fit raises (ShuffleAuditError included): restore the user's loaders here.
        self._undo()

    def _undo(self) -> None:
        """Restore the strategy and every train loader (idempotent)."""
        unhook_process_dataloader(self._patched_)
        self._patched_ = None
        for loader, _ in self._attached_.values():
            detach(loader)
        self._attached_ = {}
        self._loaders_ = []
        self._fingerprint_tables_ = {}  # device memory goes when the fit ends

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # overfit_batches replays the same sequential batches on purpose: no order finding then.
        self._overfit_codes_ = _INTENDED_BY_OVERFIT if getattr(trainer, "overfit_batches", 0) > 0 else frozenset()
        self._world_ = trainer.world_size
        self._resumed_at_ = trainer.current_epoch if trainer.ckpt_path is not None else None
        # A mid-epoch resume skips on_train_epoch_start: the cut epoch is under way from here.
        mid_epoch = bool(getattr(trainer.fit_loop, "restarted_mid_epoch", False))
        self._cut_epoch_ = trainer.current_epoch if mid_epoch else None
        self._epoch_open_ = mid_epoch
        self._take_partial(trainer, mid_epoch)
        if trainer.is_global_zero:
            self._report_dir_ = self._choose_report_dir(trainer)
        self._loaders_ = self._follow_loaders(trainer, [])
        configs = self._describe(trainer, self._loaders_)  # collective: every rank enters it
        parts = {}
        for slot in self._loaders_:
            found = judge_fit_start(configs[slot.key], trainer.world_size, self._skip(), self.escalate, slot.name)
            parts[slot.key] = found
            self._note_cause(slot, found)
        # Decided from gathered data, identically on every rank: no broadcast needed.
        self.fit_start_ = self._combine(None, parts)
        self._report(trainer, self.fit_start_, tag_step=0)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps_ = 0
        self._epoch_now_ = trainer.current_epoch  # once an epoch (a resumed one too), not on every batch
        self._pending_ = None
        self._epoch_open_ = True
        # A reload (reload_dataloaders_every_n_epochs) swaps loaders on every rank at the same epoch, so every rank
        # enters the collective below alike.
        before = {slot.key: slot.loader for slot in self._loaders_}
        current = train_loaders(trainer.train_dataloader)
        changed = len(current) != len(before) or any(
            before.get(name if name is not None else SINGLE_LOADER) is not loader for name, _, loader in current
        )
        if changed:
            previous_configs = dict(self.configs_)
            self._loaders_ = self._follow_loaders(trainer, self._loaders_)
            configs = self._describe(trainer, self._loaders_)  # collective
            parts = {}
            for slot in self._loaders_:
                if before.get(slot.key) is slot.loader:
                    continue
                parts[slot.key] = judge_reload(
                    trainer.current_epoch,
                    configs[slot.key],
                    previous_configs.get(slot.key, []),
                    trainer.world_size,
                    self._skip(),
                    self.escalate,
                    slot.name,
                )
                # One finding per cause: a cause an earlier loader of this name was already reported for (a
                # loader rebuilt unshuffled, or with the same seed, at every reload) becomes a note.
                part, known = parts[slot.key], self._causes_.setdefault(slot.key, {})
                again = [f for f in part.findings if f.code in known]
                for finding in again:
                    part.findings.remove(finding)
                    part.notes.append(f"{finding.code} again (reported at {known[finding.code]}): {finding.evidence}")
                prior = self._explained_.pop(slot.key, None)
                self._note_cause(slot, part)
                if slot.key not in self._explained_ and prior is not None and any(f.code in prior for f in again):
                    self._explained_[slot.key] = prior
            self._pending_ = self._combine(trainer.current_epoch, parts)
        for slot in self._loaders_:
            slot.ids, slot.labels = [], []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._steps_ += 1
        for slot in self._loaders_:
            part = sub_batch(batch, slot.path) if slot.path else batch
            if part is None:  # an exhausted loader of several (max_size mode)
                continue
            # Device tensors only: appended here, moved to the host once at the end of the epoch.
            if slot.recorder is None:
                value = None
                if self.sample_ids is not None and slot.source != "content fingerprints":
                    value = self._extract(slot, part, self.sample_ids, "sample_ids")
                    if value is not None:
                        slot.source = "sample_ids"
                        slot.ids.append(torch.as_tensor(value).reshape(-1).detach())
                if value is None and self.fingerprints and slot.source != "sample_ids":
                    slot.source = "content fingerprints"  # no sample_ids, or none in this loader's batches
                    slot.ids.append(fingerprint(part, self._fingerprint_tables_))
            if (
                slot.labels_array is None
                and self.labels is not None
                and (_is_key(self.labels) or callable(self.labels))
            ):
                value = self._extract(slot, part, self.labels, "labels")
                if value is not None:
                    labels = torch.as_tensor(value)
                    if labels.ndim > 1:
                        labels = labels.argmax(dim=-1)
                    slot.labels.append(labels.detach().reshape(-1))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        payloads = {slot.key: self._local_payload(trainer, slot) for slot in self._loaders_}
        problems = [slot.label_problem for slot in self._loaders_ if slot.label_problem]
        if not _distributed.all_ranks(trainer, not problems):  # collective: every rank raises, or none
            raise ValueError(
                problems[0]
                if problems
                else "ShuffleAudit(labels=...): another rank's labels do not match its samples (see that rank's error)"
            )
        gathered = _distributed.gather_objects(trainer, payloads)  # collective
        verdict_data: dict[str, Any] = {}
        epoch = trainer.current_epoch
        if trainer.is_global_zero:
            parts = {}
            for slot in self._loaders_:
                per_rank = [g[slot.key] for g in gathered]
                previous = self.previous_.get(slot.key)
                previous_epoch = self.previous_epoch_.get(slot.key)
                part, record = judge_epoch(
                    epoch,
                    per_rank,
                    self.configs_.get(slot.key, []),
                    previous,
                    previous_epoch,
                    self._skip(),
                    self.escalate,
                    slot.name,
                    self._explained_.get(slot.key),
                    order_map=self.images and _logging.has_tensorboard(trainer),
                )
                part.notes.extend(slot.problems)
                unjudged = self._unjudged_ is not None and epoch == self._cut_epoch_
                if unjudged:  # only the part after the resume is here: what it lacks is no finding
                    part.notes.append(f"epoch {epoch} not judged: {self._unjudged_}")
                    part.notes.extend(f"{f.code} (not judged): {f.evidence}" for f in part.findings)
                    part.findings.clear()
                    record = None  # nor is the next epoch compared with a part of this one
                else:
                    self._judge_resume(epoch, slot, part, per_rank)
                parts[slot.key] = part
                self._images(trainer, slot, per_rank, part)
                if record is not None:  # what the next epoch is compared with
                    self.previous_[slot.key], self.previous_epoch_[slot.key] = record, epoch
            verdict = self._combine(epoch, parts)
            if self._pending_ is not None:
                verdict.findings[:0] = self._pending_.findings
                verdict.notes[:0] = self._pending_.notes
            verdict.metrics["issues"] = float(len(verdict.issues))
            verdict_data = verdict.to_dict()
        verdict = EpochVerdict.from_dict(_distributed.broadcast(trainer, verdict_data))  # collective
        self.verdicts_.append(verdict)
        self._epoch_open_ = False
        self._partial_, self._before_all_, self._unjudged_ = {}, {}, None
        self._report(trainer, verdict)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            # Once per fit, where Lightning's own messages go (shown by default, as EarlyStopping's restore line).
            rank_zero_info(summary(self.fit_start_, self.verdicts_))
            self._write_files()

    # -------------------------------------------------------------------------------------------- resume

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "verdicts": [v.to_dict() for v in self.verdicts_],
            "previous": {key: record.to_state() for key, record in self.previous_.items()},
            "previous_epoch": dict(self.previous_epoch_),
            "fit_start": self.fit_start_.to_dict() if self.fit_start_ else None,
            "partial": self._partial_state(),
        }

    def _partial_state(self) -> dict[str, Any]:
        """The epoch under way on this process, packed (see :mod:`epochkit.audit.resume`); empty between epochs and
        under DDP, where :meth:`on_save_checkpoint` adds every rank's part instead (``state_dict`` takes no part in a
        collective: anyone may call it on one rank)."""
        if self._world_ != 1:
            return {}
        return {key: pack_partial(*part) for key, part in self._partial_local().items()}

    def _partial_local(self) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
        """This rank's part of the epoch under way, per loader: ``(epoch, ids, batch sizes)`` the loop consumed so
        far, the part before an earlier cut included; empty between epochs and in a cut epoch that cannot be judged
        whole (a later resume must not take the part after the cut for the whole)."""
        if not self._epoch_open_ or not self._loaders_ or self._unjudged_ is not None:
            return {}
        out = {}
        for slot in self._loaders_:
            ids, sizes = self._consumed(slot, peek=True)
            earlier = self._partial_.get(slot.key)
            if earlier is not None and earlier[0] == self._epoch_now_:  # checkpointed again in the cut epoch
                ids, sizes = np.concatenate([earlier[1], ids]), np.concatenate([earlier[2], sizes])
            if sizes.size:
                out[slot.key] = (self._epoch_now_, ids, sizes)
        return out

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Under DDP, every rank's part of the epoch under way, in the checkpoint by rank: Lightning writes rank 0's
        callback state only. Every rank builds the checkpoint (``Trainer.save_checkpoint`` runs on all of them, as
        ``ModelCheckpoint`` calls it), so every rank enters the one collective; the condition is the same on all."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if trainer.world_size <= 1 or state is None or not self._epoch_open_ or not self._loaders_:
            return
        gathered = _distributed.gather_objects(trainer, self._partial_local())  # collective, once per checkpoint
        state["partial_ranks"] = {
            rank: {key: pack_partial(*part) for key, part in parts.items()} for rank, parts in enumerate(gathered)
        }
        state["partial_world"] = trainer.world_size

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        remember_source(self, trainer)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state(self, state_dict, _STATE_SCHEMA)
        self.verdicts_ = [EpochVerdict.from_dict(v) for v in state_dict.get("verdicts", [])]
        previous = state_dict.get("previous") or {}
        previous_epoch = state_dict.get("previous_epoch")
        if "ids" in previous:  # a checkpoint of a version that audited one loader
            previous = {SINGLE_LOADER: previous}
            previous_epoch = {SINGLE_LOADER: previous_epoch} if previous_epoch is not None else {}
        self.previous_ = {key: Record.from_state(value) for key, value in previous.items()}
        self.previous_epoch_ = {key: int(value) for key, value in (previous_epoch or {}).items()}
        fit_start = state_dict.get("fit_start")
        self.fit_start_ = EpochVerdict.from_dict(fit_start) if fit_start else None
        ranks = state_dict.get("partial_ranks") or {}
        if not ranks and state_dict.get("partial"):  # saved by one process
            ranks = {0: state_dict["partial"]}
        self._partial_ranks_ = {
            int(rank): {key: unpack_partial(value) for key, value in parts.items()} for rank, parts in ranks.items()
        }
        self._partial_world_ = int(state_dict.get("partial_world", 1)) if self._partial_ranks_ else None

    def _take_partial(self, trainer: pl.Trainer, mid_epoch: bool) -> None:
        """At a (re)start: this rank's part of the cut epoch before the checkpoint, and every rank's, when the
        checkpoint holds them for this number of ranks; else why the cut epoch cannot be judged whole (a notice).
        The checkpoint is the same file on every rank, so every rank decides alike."""
        ranks, saved, epoch = self._partial_ranks_, self._partial_world_, trainer.current_epoch
        self._partial_ranks_, self._partial_world_ = {}, None
        self._partial_, self._before_all_, self._unjudged_ = {}, {}, None
        if not mid_epoch:
            return
        if saved is None:
            self._unjudged_ = (
                "the checkpoint holds no record of the part before the cut (saved without it, e.g. by an older "
                "epochkit)"
            )
        elif saved != trainer.world_size:
            self._unjudged_ = (
                f"the checkpoint holds the part before the cut of {saved} process(es), and this fit runs "
                f"{trainer.world_size}: the parts cannot be joined"
            )
        else:
            self._partial_ = {k: v for k, v in ranks.get(trainer.global_rank, {}).items() if v[0] == epoch}
            keys = {k for parts in ranks.values() for k, v in parts.items() if v[0] == epoch}
            self._before_all_ = {
                k: np.concatenate([ranks[r][k][1] for r in sorted(ranks) if k in ranks[r]]) for k in sorted(keys)
            }
        if self._unjudged_ is not None and trainer.is_global_zero:
            rank_zero_info(
                f"ShuffleAudit: this fit resumed in the middle of epoch {epoch}, and {self._unjudged_}. Epoch {epoch} "
                "is not judged (its coverage, duplicates and order); the epochs after it are."
            )

    # ----------------------------------------------------------------------------------------- internals

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.verdicts_ = []
        self.fit_start_ = None
        self.previous_ = {}
        self.previous_epoch_ = {}
        self.configs_ = {}
        self._loaders_ = []
        self._attached_ = {}
        self._explained_ = {}
        self._causes_ = {}
        self._pending_ = None
        self._announced_ = set()
        self._report_dir_ = None
        self._steps_ = 0
        self._patched_ = None
        self._overfit_codes_ = frozenset()
        self._fingerprint_tables_ = {}
        self._partial_ = {}
        self._partial_ranks_ = {}
        self._partial_world_ = None
        self._before_all_ = {}
        self._unjudged_ = None
        self._epoch_open_ = False
        self._resumed_at_ = None
        self._cut_epoch_ = None
        self._world_ = 1
        self._epoch_now_ = 0

    def _follow_loaders(self, trainer: pl.Trainer, old: list[_Loader]) -> list[_Loader]:
        """The fit's train loaders now, keeping what is known of the ones that did not change and dropping the
        recorders of the ones that went away."""
        found = train_loaders(trainer.train_dataloader)
        by_key = {slot.key: slot for slot in old}
        several = len(found) > 1
        slots = []
        for name, path, loader in found:
            key = name if name is not None else SINGLE_LOADER
            kept = by_key.get(key)
            if kept is not None and kept.loader is loader:
                slots.append(kept)
                continue
            attached = self._attached_.get(id(loader))
            recorder = attached[1] if attached is not None and attached[0] is loader else None
            slot = _Loader(name, path, loader, recorder)
            if several and recorder is None and isinstance(loader, DataLoader):
                slot.first_pass = self._pass_length(trainer, loader)
            slots.append(slot)
        current = {id(slot.loader) for slot in slots}
        for gone in [k for k in self._attached_ if k not in current]:
            detach(self._attached_.pop(gone)[0])
        return slots

    @staticmethod
    def _pass_length(trainer: pl.Trainer, loader: DataLoader) -> int | None:
        """Batches in one pass of a sized loader, after ``limit_train_batches`` (None when unsized)."""
        length = sized_len(loader)
        if length is None:
            return None
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            return min(length, limit)
        return length if limit is None or limit >= 1.0 else int(length * limit)

    def _describe(self, trainer: pl.Trainer, slots: list[_Loader]) -> dict[str, list[LoaderConfig]]:
        """Every loader's configuration on every rank (one collective), and its labels."""
        local = {
            slot.key: describe_loader(slot.loader)
            if isinstance(slot.loader, DataLoader)
            else LoaderConfig(iterable=True)
            for slot in slots
        }
        gathered = _distributed.gather_objects(trainer, local)
        self.configs_ = {slot.key: [g[slot.key] for g in gathered] for slot in slots}
        for slot in slots:
            slot.labels_array = self._resolve_labels_array(slot)
        return self.configs_

    def _note_cause(self, slot: _Loader, verdict: EpochVerdict) -> None:
        """Remember the fit-start (or reload) causes reported for a loader, and one that explains a replay, so that
        neither they nor the order findings they imply are reported again."""
        where = "fit start" if verdict.epoch is None else f"epoch {verdict.epoch}"
        causes = self._causes_.setdefault(slot.key, {})
        for finding in verdict.findings:
            causes.setdefault(finding.code, where)
        config = self.configs_.get(slot.key, [LoaderConfig()])[0]
        if config.get("shuffle") is False:
            self._explained_[slot.key] = f"shuffle_off at {causes.get('shuffle_off', where)}"
        if "same_seed_reload" in causes and any(f.code == "same_seed_reload" for f in verdict.findings):
            self._explained_[slot.key] = f"same_seed_reload at {causes['same_seed_reload']}"

    def _combine(self, epoch: int | None, parts: dict[str, EpochVerdict]) -> EpochVerdict:
        """One verdict over every loader: metrics under ``<loader>/`` when the fit has several."""
        several = len(self._loaders_) > 1
        out = EpochVerdict(epoch)
        for key, part in parts.items():
            for metric, value in part.metrics.items():
                if several and metric == "issues":
                    continue
                out.metrics[f"{key}/{metric}" if several else metric] = value
            out.findings.extend(part.findings)
            out.notes.extend(f"{key}: {note}" if several else note for note in part.notes)
            out.digests.update(part.digests)
        if several and epoch is not None:
            out.metrics["issues"] = float(len(out.issues))
        return out

    def _extract(self, slot: _Loader, batch: Any, key: Any, what: str) -> Any:
        try:
            return extract(batch, key)
        except (KeyError, IndexError, TypeError) as error:
            if callable(key):
                if len(self._loaders_) == 1:
                    raise  # the user's own function failed: its own error says best why
                reason = f"{type(error).__name__}: {error}"
            else:
                reason = _missing_key(batch, key)
            if len(self._loaders_) == 1:
                raise ValueError(
                    f"ShuffleAudit({what}={key!r}): {reason}; pass one of those keys, a function of the batch, "
                    f"or {what}=None."
                ) from error
            problem = f"{what}={key!r} does not apply to its batches ({reason}): not used"
            if problem not in slot.problems:
                slot.problems.append(problem)
            return None

    def _resolve_labels_array(self, slot: _Loader) -> np.ndarray | None:
        """Labels indexed by dataset index, when the audit has sampler indices to index them with."""
        loader = slot.loader
        if not isinstance(loader, DataLoader) or slot.recorder is None:
            return None
        dataset = loader.dataset
        labels: Any = None
        if self.labels is not None and not (_is_key(self.labels) or callable(self.labels)):
            labels = self.labels
            size = len(dataset) if hasattr(dataset, "__len__") else None
            if size is not None and len(labels) != size:
                which = f"train loader {slot.name!r}'s" if slot.name is not None else "the training"
                raise ValueError(
                    f"ShuffleAudit(labels=<{len(labels)} labels>): one label per sample of {which} data set is "
                    f"needed ({size} samples); or pass a batch key (e.g. labels=1) or a function of the batch."
                )
        elif isinstance(self.labels, int) and isinstance(dataset, TensorDataset):
            if not -len(dataset.tensors) <= self.labels < len(dataset.tensors):
                raise ValueError(
                    f"ShuffleAudit(labels={self.labels}): the training TensorDataset has {len(dataset.tensors)} "
                    f"tensors, so a batch has keys 0..{len(dataset.tensors) - 1}."
                )
            labels = dataset.tensors[self.labels]  # batch[k] is tensors[k][indices]: no per-batch work needed
        elif self.labels is None:
            labels = getattr(dataset, "targets", None)
            base = getattr(dataset, "dataset", None)
            if labels is None and base is not None and hasattr(base, "targets") and hasattr(dataset, "indices"):
                labels = np.asarray(base.targets)[np.asarray(dataset.indices)]  # torch Subset of a labelled set
        if labels is None:
            return None
        array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if array.ndim > 1:
            array = array.argmax(axis=-1)
        return _small_ints(array)

    def _local_payload(self, trainer: pl.Trainer, slot: _Loader) -> EpochPayload:
        """This rank's epoch of one loader: local coverage and label statistics, and the record to gather."""
        configs = self.configs_.get(slot.key) or [LoaderConfig()]
        config = configs[min(trainer.global_rank, len(configs) - 1)]
        label_chunks = slot.labels
        if slot.first_pass is not None:  # a loader cycled among several: its first pass is its epoch
            label_chunks = label_chunks[: slot.first_pass]
        ids, sizes = self._consumed(slot)
        source = "sampler indices" if slot.recorder is not None else slot.source if sizes.size else "none"
        partial = self._partial_.get(slot.key)
        cut = None
        if partial is not None and partial[0] == trainer.current_epoch and source != "none":
            # the cut epoch, whole: the part before the checkpoint, then the part after the resume
            _, before, before_sizes = partial
            # the previous epoch's record is this rank's own order on one process only
            previous = self._previous_order(slot.key, config) if trainer.world_size == 1 else (None, None)
            cut = cut_part(before, ids, config, self._before_all_.get(slot.key), *previous)
            ids, sizes = np.concatenate([before, ids]), np.concatenate([before_sizes, sizes])
        labels_by_position = None
        slot.label_problem = None
        if label_chunks:
            joined = torch.cat([c.to(label_chunks[0].device) for c in label_chunks])
            labels_by_position = _small_ints(joined.cpu().numpy())
            if labels_by_position.size != ids.size:  # the label checks would be skipped without a word
                loader = f"train loader {slot.name!r}" if slot.name is not None else "the train loader"
                slot.label_problem = (
                    f"ShuffleAudit(labels={self.labels!r}): it gave {labels_by_position.size} labels for the "
                    f"{ids.size} samples {loader} presented in epoch {trainer.current_epoch}: it must give one label "
                    "per sample of the batch (a 1-D tensor, or one-hot rows)."
                )
        payload = epoch_payload(
            ids,
            sizes,
            source=source,
            dataset_size=config.get("dataset_size"),
            world_size=trainer.world_size,
            max_samples=self.max_samples,
            labels_by_id=slot.labels_array,
            labels_by_position=labels_by_position,
        )
        payload.cut = cut
        return payload

    def _consumed(self, slot: _Loader, peek: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ids and batch sizes one loader presented to the loop since the epoch (or the resume) began; ``peek``
        keeps them recorded (a checkpoint mid-epoch)."""
        if slot.recorder is not None:
            config = (self.configs_.get(slot.key) or [LoaderConfig()])[0]
            resumed = self._cut_epoch_ is not None and self._cut_epoch_ == self._epoch_now_
            resumed = resumed and bool(config.get("stateful_loader"))
            if peek:
                return slot.recorder.peek(self._steps_, resumed)
            return slot.recorder.take(self._steps_, resumed)
        chunks = slot.ids[: slot.first_pass] if slot.first_pass is not None else slot.ids
        if not chunks:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        ids_t = torch.cat([c.to(chunks[0].device) for c in chunks])
        sizes = np.array([c.shape[0] for c in chunks], np.int64)
        return ids_t.cpu().numpy().astype(np.int64), sizes  # the one host transfer of the epoch (or checkpoint)

    def _previous_order(self, key: str, config: LoaderConfig) -> tuple[np.ndarray | None, int | None]:
        """The previous epoch's whole order of a loader, when its record kept every sample (else None)."""
        record, epoch = self.previous_.get(key), self.previous_epoch_.get(key)
        if record is None or epoch is None or record.ids.size != config.get("dataset_size"):
            return None, None
        return record.ids, epoch

    def _judge_resume(self, epoch: int, slot: _Loader, part: EpochVerdict, per_rank: list[EpochPayload]) -> None:
        """Add ``resume_replayed`` to an epoch's verdict (rank 0) when the resume replayed data; the findings it
        explains (the order and coverage findings of the replay) become notes, so the fix named is the resume's."""
        if "resume_replayed" in self._skip():
            return
        config = (self.configs_.get(slot.key) or [LoaderConfig()])[0]
        finding = None
        cuts = [p.cut for p in per_rank]
        if any(cut is not None for cut in cuts):  # the cut epoch, joined on every rank
            distinct = None
            if len(per_rank) > 1 and all(p.fraction == 1.0 for p in per_rank):  # every id kept: exact over ranks
                distinct = int(np.unique(np.concatenate([p.ids for p in per_rank])).size)
            finding = judge_cut_epoch(epoch, cuts, config, slot.name, distinct)
        if (
            finding is None
            and self._resumed_at_ is not None
            and epoch >= self._resumed_at_
            and slot.key not in self._explained_
            and config.get("shuffle") is not False
        ):
            # Only a replay the resume explains: the order repeated an epoch other than the previous one, or the
            # sampler's order depends on the epoch (set_epoch), and no epoch before the resume repeated its order.
            earlier = earlier_digests(self.verdicts_, slot.key)
            digest = str(part.digests.get(slot.key, {}).get("merged", ""))
            repeated_before = any(
                f.code in ORDER_CODES and f.loader == slot.name for v in self.verdicts_ for f in v.findings
            )
            if not repeated_before and (config.get("sampler_set_epoch") or earlier.get(epoch - 1) != digest):
                finding = judge_replayed_epoch(epoch, digest, earlier, self._resumed_at_, config, slot.name)
        if finding is None:
            return
        explained = [f for f in part.findings if f.code in _EXPLAINED_BY_RESUME]
        for f in explained:
            part.findings.remove(f)
            part.notes.append(f"{f.code} (explained by resume_replayed): {f.evidence}")
        part.findings.insert(0, finding)

    def _images(self, trainer: pl.Trainer, slot: _Loader, payloads: list[EpochPayload], verdict: EpochVerdict) -> None:
        """The order map (against the previous epoch) and the label map of one loader, to TensorBoard (rank 0):
        plots with matplotlib, the raw maps without it or with ``images="raw"``."""
        if not self.images or not _logging.has_tensorboard(trainer):
            return
        plot = self.images == "plot" or (self.images is True and img.can_plot())
        prefix = "shuffle_audit/" if len(self._loaders_) == 1 else f"shuffle_audit/{slot.key}/"
        epoch = int(verdict.epoch or 0)
        if plot and not (verdict.findings or epoch & (epoch - 1) == 0):
            # A plot costs about 0.1 s (matplotlib), a fast epoch less: plots at epochs 0, 1, 2, 4, 8, ... and at every
            # epoch with a finding, so a long fit draws O(log epochs) of them. The raw maps are cheap: every epoch.
            return
        if verdict.order_map is not None:
            if plot:
                line = _verdict_line(verdict, ORDER_CODES, self._explained_.get(slot.key))
                previous = self.previous_epoch_.get(slot.key)
                image = img.plot_order_map(verdict.order_map, epoch, previous, line, slot.name)
            else:
                image = img.render_order_map(verdict.order_map)
            _logging.log_image(trainer, prefix + "order_map", image)
        table = img.merge_label_tables([p.label_table for p in payloads])
        if table is not None:
            shares = img.label_map(table)
            if plot:
                line = _verdict_line(verdict, LABEL_CODES, None)
                image = img.plot_label_map(shares, epoch, line, slot.name, classes=table.shape[1])
            else:
                image = img.render_label_map(shares)
            _logging.log_image(trainer, prefix + "label_map", image)

    def _skip(self) -> set[str]:
        return set(self.ignore) | set(self._overfit_codes_)

    def _report(self, trainer: pl.Trainer, verdict: EpochVerdict, tag_step: int | None = None) -> None:
        if verdict.epoch is not None:
            _logging.log_scalars(trainer, {f"shuffle_audit/{k}": v for k, v in verdict.metrics.items()})
        _logging.log_text(trainer, "shuffle_audit/report", markdown_report(verdict), step=tag_step)
        if trainer.is_global_zero:
            self._write_files()
            for finding in verdict.findings:
                first = (finding.loader, finding.code) not in self._announced_
                self._announced_.add((finding.loader, finding.code))
                if not first:
                    log.info(finding.message())  # said already in this fit: the epochkit.audit logger only
                elif finding.severity != "issue":
                    rank_zero_info(finding.message())  # a notice, once per fit, where Lightning's messages go
                elif self.on_issue == "warn":
                    warnings.warn(finding.message(), ShuffleAuditWarning, stacklevel=_user_stacklevel())
                elif self.on_issue == "log":
                    log.warning(finding.message())
        if self.on_issue == "raise" and verdict.issues:
            raise ShuffleAuditError(verdict.issues)  # on every rank: the verdict is the same everywhere

    def _choose_report_dir(self, trainer: pl.Trainer) -> Path:
        """The logger's directory; without a logger, a fresh ``shuffle_audit/version_N`` under the Trainer's
        ``default_root_dir``, so that a second fit never overwrites the first one's report."""
        for logger in trainer.loggers:
            if logger.log_dir is not None:
                return Path(logger.log_dir)
        root = Path(trainer.default_root_dir) / "shuffle_audit"
        taken = {p.name for p in root.glob("version_*")} if root.is_dir() else set()
        n = 0
        while f"version_{n}" in taken:
            n += 1
        return root / f"version_{n}"

    def _write_files(self) -> None:
        """``shuffle_audit.json`` and ``shuffle_audit_digests.txt`` (atomically, rank 0)."""
        if self._report_dir_ is None:
            return
        write_json_atomic(
            self._report_dir_ / REPORT_FILE,
            {
                "config": self.configs_,
                "fit_start": self.fit_start_.to_dict() if self.fit_start_ else None,
                "epochs": [v.to_dict() for v in self.verdicts_],
                "summary": summary(self.fit_start_, self.verdicts_),
            },
        )
        lines = [line for v in self.verdicts_ if v.epoch is not None for line in digest_lines(v.epoch, v.digests)]
        write_bytes_atomic(self._report_dir_ / DIGEST_FILE, "".join(f"{line}\n" for line in lines).encode())


def _verdict_line(verdict: EpochVerdict, codes: Sequence[str], explained: str | None) -> str:
    """The findings among ``codes`` of an epoch's verdict for one loader, for a picture's title.

    Example:
        >>> replay = EpochVerdict(1, findings=[Finding("order_unchanged", 1, "Spearman 1.000")])
        >>> _verdict_line(replay, ORDER_CODES, None)
        'order_unchanged (issue): the epoch order did not change'
        >>> _verdict_line(EpochVerdict(1), ORDER_CODES, "shuffle_off at fit start")
        'no new finding: shuffle_off at fit start explains it'
    """
    found = list({f.code: f for f in verdict.findings if f.code in codes}.values())
    if len(found) == 1:
        return f"{found[0].code} ({found[0].severity}): {found[0].title}"
    if found:
        return ", ".join(f"{f.code} ({f.severity})" for f in found)
    return f"no new finding: {explained} explains it" if explained else "no finding"


def _missing_key(batch: Any, key: int | str) -> str:
    """Why ``batch[key]`` failed, naming the keys the batch does have.

    Example:
        >>> _missing_key({"x": 0, "labels": 1}, "label")
        "the training batch (a dict) has no key 'label'; its keys are ['x', 'labels']"
        >>> _missing_key((0, 1), 2)
        'the training batch (a tuple of 2) has no key 2; its keys are 0..1'
    """
    kind = type(batch).__name__
    if isinstance(batch, Mapping):
        return f"the training batch (a {kind}) has no key {key!r}; its keys are {list(batch.keys())!r}"
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        keys = f"0..{len(batch) - 1}" if len(batch) else "none (it is empty)"
        return f"the training batch (a {kind} of {len(batch)}) has no key {key!r}; its keys are {keys}"
    return f"the training batch (a {kind}) cannot be indexed by {key!r}"


def _small_ints(labels: np.ndarray) -> np.ndarray:
    """Integer labels in the smallest dtype that holds them (memory for huge data sets); others unchanged."""
    if labels.dtype.kind == "f" and labels.size and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0 and labels.max() < 2**15:
        return labels.astype(np.int16)
    return labels
