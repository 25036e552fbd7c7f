"""The ``InitAudit`` callback: thin Lightning glue around :mod:`.symmetry`, :mod:`.dead` and :mod:`.findings`."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from epochkit import _distributed, _logging
from epochkit._callback import cached_state_key
from epochkit._validation import check_bool, check_choice, check_int
from epochkit.audit.callback import _user_stacklevel
from epochkit.init_audit.dead import Activation, PositiveSums, relu_after_layers
from epochkit.init_audit.findings import Finding, markdown_report, summary
from epochkit.init_audit.symmetry import (
    LayerGroups,
    checked_layers,
    find_identical_units,
    layer_weight,
    still_identical,
    unit_count,
)

log = logging.getLogger("epochkit.init_audit")

OnIssue = Literal["warn", "raise", "log"]
#: Strategies whose parameters are shards (a rank holds part of each tensor): units cannot be compared there.
SHARDED_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy")


class InitAuditWarning(UserWarning):
    """Issued for each issue the initialisation audit finds when ``on_issue="warn"``."""


class InitAuditError(RuntimeError):
    """Raised on every rank, from inside the fit, when ``on_issue="raise"`` and the audit found an issue.

    Attributes:
        findings: The issues found.
    """

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("\n".join(f.message() for f in findings))
        self.findings = findings


class InitAudit(Callback):
    """Catches a broken initialisation before the first epoch ends: units of a layer that start identical and stay
    identical (a zero or constant init: the layer works as one unit), and ReLU layers that never activate.

    **Symmetric units.** Before the first optimizer step, the output units of every trainable ``nn.Linear``,
    ``nn.Conv1d/2d/3d`` and ``nn.Embedding`` (rows, filters, embedding columns; with their bias) are grouped when
    exactly identical. After ``steps`` optimizer steps (or at the end of the first epoch, if sooner) the groups are
    looked at again: a group whose units are all still identical is an issue (``symmetric_units``); a group that
    split, even partly, is being differentiated by its gradients (a zero-initialised head or residual branch) and is
    a notice (``symmetric_init``).

    **Dead units** (``dead_units=True``). Forward hooks on the ``nn.ReLU``/``nn.ReLU6`` modules that follow a Linear
    or Conv layer record, during the first epoch's training batches only, which units were ever positive; the hooks
    are removed at the end of that epoch. Units never positive on any sample (of any rank) are a notice
    (``dead_units``, with the fraction); a layer with every unit dead is an issue (``dead_layer``).

    Observation never changes training: no random draw, no parameter or gradient touched, no host synchronisation
    in the per-batch hooks (the masks stay on the device until the epoch ends). Under DDP the weights are the same on
    every rank: rank 0 checks them and broadcasts the findings, and the dead-unit masks are summed over the ranks.
    Sharded strategies (FSDP, ModelParallel, DeepSpeed) are refused at setup.

    Args:
        on_issue: ``"warn"`` (an :class:`InitAuditWarning` per issue), ``"raise"`` (an :class:`InitAuditError` on
            every rank, from the batch of step ``steps`` or the end of the first epoch), or ``"log"`` (Python
            logging only). Notices are only logged (INFO, logger ``epochkit.init_audit``).
        steps: Optimizer steps after which identical units are looked at again.
        dead_units: Whether to look for dead ReLU units during the first epoch.

    Example:
        An MLP initialised with zeros fails the fit:

        >>> import tempfile
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from epochkit.demo import DigitsClassifier
        >>> model = DigitsClassifier()
        >>> for p in model.parameters():
        ...     _ = torch.nn.init.zeros_(p)
        >>> data = TensorDataset(torch.randn(64, 64), torch.randint(0, 10, (64,)))
        >>> with tempfile.TemporaryDirectory() as root:
        ...     trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                          enable_progress_bar=False, enable_model_summary=False,
        ...                          default_root_dir=root, callbacks=[InitAudit(on_issue="raise", steps=2)])
        ...     trainer.fit(model, DataLoader(data, batch_size=16))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        epochkit.init_audit.callback.InitAuditError: InitAudit step 2: symmetric_units in 'net.0' ...
    """

    # State made during fit (skorch's trailing underscore), declared for type checkers.
    findings_: list[Finding]
    notes_: list[str]
    baseline_: list[LayerGroups]
    baseline_step_: int | None
    layers_checked_: int
    symmetry_step_: int | None
    symmetry_done_: bool
    dead_done_: bool
    dead_fraction_: dict[str, float]
    summarised_: bool
    _activations_: list[Activation]
    _judge_at_: int | None
    _positive_: dict[str, PositiveSums]
    _positive_buffer_: torch.Tensor | None
    _all_positive_: tuple[torch.Tensor, Any] | None
    _restored_alive_: dict[str, torch.Tensor]
    _calls_: dict[str, int]
    _ambiguous_: set[str]
    _hooks_: list[RemovableHandle]

    def __init__(self, on_issue: OnIssue = "warn", steps: int = 10, dead_units: bool = True) -> None:
        check_choice("InitAudit", "on_issue", on_issue, ("warn", "raise", "log"))
        check_int("InitAudit", "steps", steps, minimum=1)
        check_bool("InitAudit", "dead_units", dead_units)
        self.on_issue = on_issue
        self.steps = steps
        self.dead_units = dead_units
        self._reset_state()

    @property
    @override
    def state_key(self) -> str:
        return cached_state_key(self, steps=self.steps, dead_units=self.dead_units)

    # ------------------------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_state()
        name = type(trainer.strategy).__name__
        if any(cls.__name__ in SHARDED_STRATEGIES for cls in type(trainer.strategy).__mro__):
            raise MisconfigurationException(
                f"InitAudit cannot check a fit under {name}: it shards every parameter across the ranks, so no rank "
                "holds a layer's units to compare. Check the initialisation in a short fit of the same module on "
                "one device or with DDP (e.g. Trainer(max_steps=20, callbacks=[InitAudit()])), then drop InitAudit "
                f"from the {name} fit."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_unsharded(pl_module)
        self.layers_checked_ = sum(1 for _ in checked_layers(pl_module))
        if not self.symmetry_done_ and self.baseline_step_ is None:
            if trainer.global_step > 0:
                self.symmetry_done_ = True
                self.notes_.append(
                    f"the fit resumed at step {trainer.global_step} without InitAudit state: symmetry not judged"
                )
            else:
                self._take_baseline(trainer, pl_module)
        if self.dead_units and not self.dead_done_:
            if trainer.current_epoch == 0:
                self._add_hooks(trainer, pl_module)
            else:
                self.dead_done_ = True
                self.notes_.append(f"the fit resumed in epoch {trainer.current_epoch}: dead units not judged")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step is a Python int, the same on every rank: no host synchronisation, and every rank enters the
        # broadcast in _judge_symmetry at the same batch. Once judged (or never started), one comparison per batch.
        if self._judge_at_ is not None and trainer.global_step >= self._judge_at_:
            self._judge_symmetry(trainer, pl_module)
            if self._hooks_:
                self._ask_all_positive()
        if self._all_positive_ is not None:
            self._stop_hooks_if_all_positive()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.baseline_step_ is not None and not self.symmetry_done_:
            self._judge_symmetry(trainer, pl_module)  # an epoch shorter than `steps` optimizer steps
        if self.dead_units and not self.dead_done_:
            self._judge_dead(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown when fit raises (InitAuditError included): the hooks go here.
        self._remove_hooks()

    # -------------------------------------------------------------------------------------------- resume

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings_],
            "notes": list(self.notes_),
            "baseline": [entry.to_dict() for entry in self.baseline_],
            "baseline_step": self.baseline_step_,
            "symmetry_step": self.symmetry_step_,
            "symmetry_done": self.symmetry_done_,
            "dead_done": self.dead_done_,
            "dead_fraction": dict(self.dead_fraction_),
            # Saved with a checkpoint only (not per step); a fit resumed inside the first epoch keeps counting.
            "alive": {path: (sums.flush() > 0).cpu() for path, sums in self._positive_.items()},
            "calls": dict(self._calls_),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.findings_ = [Finding.from_dict(f) for f in state_dict.get("findings", [])]
        self.notes_ = list(state_dict.get("notes", []))
        self.baseline_ = [LayerGroups.from_dict(entry) for entry in state_dict.get("baseline", [])]
        self.baseline_step_ = state_dict.get("baseline_step")
        self.symmetry_step_ = state_dict.get("symmetry_step")
        self.symmetry_done_ = bool(state_dict.get("symmetry_done", False))
        self.dead_done_ = bool(state_dict.get("dead_done", False))
        self.dead_fraction_ = {str(k): float(v) for k, v in state_dict.get("dead_fraction", {}).items()}
        self._restored_alive_ = dict(state_dict.get("alive", {}))
        started = self.baseline_step_ is not None and not self.symmetry_done_
        self._judge_at_ = (self.baseline_step_ or 0) + self.steps if started else None
        self._calls_ = {str(k): int(v) for k, v in state_dict.get("calls", {}).items()}

    # ----------------------------------------------------------------------------------------- internals

    def _reset_state(self) -> None:
        """The state of one fit, fresh (see :mod:`epochkit._callback`)."""
        self.findings_ = []
        self.notes_ = []
        self.baseline_ = []
        self.baseline_step_ = None
        self.layers_checked_ = 0
        self.symmetry_step_ = None
        self.symmetry_done_ = False
        self.dead_done_ = False
        self.dead_fraction_ = {}
        self.summarised_ = False
        self._activations_ = []
        self._judge_at_ = None
        self._positive_ = {}
        self._positive_buffer_ = None
        self._all_positive_ = None
        self._restored_alive_ = {}
        self._calls_ = {}
        self._ambiguous_ = set()
        self._hooks_ = []

    @staticmethod
    def _check_unsharded(pl_module: pl.LightningModule) -> None:
        sharded = [name for name, p in pl_module.named_parameters() if type(p).__name__ == "DTensor"]
        if sharded:
            raise MisconfigurationException(
                f"InitAudit cannot compare units of sharded (DTensor) parameters {sharded[:5]}: check the "
                "initialisation in a short fit of the same module before it is sharded (one device or DDP)."
            )

    def _take_baseline(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The identical-unit groups before the first optimizer step (computed on rank 0: the weights are the same
        on every rank)."""
        self.baseline_step_ = trainer.global_step
        self._judge_at_ = trainer.global_step + self.steps
        if not trainer.is_global_zero:
            return
        self.baseline_ = find_identical_units(pl_module)
        metrics = {f"init_audit/identical_groups/{e.layer}": float(len(e.groups)) for e in self.baseline_}
        metrics["init_audit/identical_groups"] = float(sum(len(e.groups) for e in self.baseline_))
        _logging.log_scalars(trainer, metrics, step=trainer.global_step)

    def _judge_symmetry(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        start = self.baseline_step_ or 0
        data: dict[str, Any] | None = None
        if trainer.is_global_zero:
            data = {"findings": [], "notes": []}
            if step <= start:
                data["notes"].append("no optimizer step in the first epoch: identical units not judged")
            else:
                still = {entry.layer: entry for entry in still_identical(pl_module, self.baseline_)}
                metrics = {}
                for entry in self.baseline_:
                    kept = still.get(entry.layer)
                    metrics[f"init_audit/identical_groups/{entry.layer}"] = float(len(kept.groups) if kept else 0)
                    data["findings"].append(self._symmetry_finding(entry, kept, start, step).to_dict())
                metrics["init_audit/identical_groups"] = float(sum(len(e.groups) for e in still.values()))
                _logging.log_scalars(trainer, metrics, step=step)
        data = _distributed.broadcast(trainer, data)  # collective: every rank is here at the same step
        assert data is not None
        self.symmetry_done_ = True
        self._judge_at_ = None
        self.symmetry_step_ = step if step > start else None
        self.baseline_ = []  # judged: nothing left to compare
        self.notes_.extend(data["notes"])
        self._report(trainer, [Finding.from_dict(f) for f in data["findings"]])

    @staticmethod
    def _symmetry_finding(entry: LayerGroups, kept: LayerGroups | None, start: int, step: int) -> Finding:
        at_start = f"{entry.grouped_units} of {entry.units} units in {len(entry.groups)} group"
        at_start += "s" if len(entry.groups) != 1 else ""
        if kept is None:
            return Finding(
                "symmetric_init",
                entry.layer,
                f"{at_start} identical at step {start}, all differentiated by step {step}",
                step,
            )
        largest = ", ".join(str(u) for u in kept.groups[0][:8]) + (", ..." if len(kept.groups[0]) > 8 else "")
        evidence = (
            f"{kept.grouped_units} of {entry.units} units in {len(kept.groups)} group"
            f"{'s' if len(kept.groups) != 1 else ''} still identical after {step - start} optimizer steps "
            f"(step {step}; at step {start}: {at_start}); largest group: units [{largest}]"
        )
        return Finding("symmetric_units", entry.layer, evidence, step)

    def _add_hooks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._activations_ = relu_after_layers(pl_module)
        if not self._activations_:
            return
        layers = [pl_module.get_submodule(act.layer) for act in self._activations_]
        units = [unit_count(layer) for layer in layers]
        device = layer_weight(layers[0]).device
        # One buffer for every hooked layer's per-unit sums (float64 holds every value of a lower precision; MPS has
        # no float64, and no float64 outputs either), filled in place by the hooks: nothing allocated per batch.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        buffer = self._positive_buffer_ = torch.zeros(sum(units), dtype=dtype, device=device)
        start = 0
        for act, n in zip(self._activations_, units, strict=True):
            total = buffer[start : start + n]
            start += n
            restored = self._restored_alive_.get(act.layer)
            if restored is not None and restored.numel() == n:
                total.copy_(restored.reshape(n))  # a unit seen positive before the checkpoint counts as positive
            self._calls_.setdefault(act.layer, 0)
            module = pl_module.get_submodule(act.activation)
            sums = self._positive_[act.layer] = PositiveSums(total, act.channels_first)
            self._hooks_.append(module.register_forward_hook(self._make_hook(trainer, act.layer, sums)))

    def _make_hook(self, trainer: pl.Trainer, layer: str, sums: PositiveSums) -> Any:
        ambiguous, calls = self._ambiguous_, self._calls_

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # Training batches only (not validation or the sanity check); device tensors only: no host sync.
            if not trainer.training or layer in ambiguous or not isinstance(output, torch.Tensor):
                return
            if sums.add(output):
                calls[layer] += 1
            else:
                ambiguous.add(layer)

        return hook

    def _ask_all_positive(self) -> None:
        """Whether every hooked unit has been positive already, asked of the device without waiting for it (read by
        :meth:`_stop_hooks_if_all_positive` once the answer is on the host). Positivity only grows, so a layer
        whose units were all positive has no dead unit, whatever the rest of the epoch brings: its hooks can go."""
        buffer = self._positive_buffer_
        if buffer is None or self._ambiguous_:
            return
        for sums in self._positive_.values():
            sums.flush()
        answer = (buffer > 0).all()
        if buffer.device.type == "cpu":
            self._all_positive_ = (answer, None)
        elif buffer.device.type == "cuda":  # copied into pinned memory behind the queued work; an event says when
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(answer, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._all_positive_ = (host, event)
        # other devices: the hooks stay to the end of the epoch

    def _stop_hooks_if_all_positive(self) -> None:
        assert self._all_positive_ is not None
        answer, event = self._all_positive_
        if event is not None and not event.query():
            return  # not there yet: asked again after the next batch
        self._all_positive_ = None
        if bool(answer) and not self._ambiguous_:  # a host tensor: no device synchronisation
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks_:
            handle.remove()
        self._hooks_ = []

    def _judge_dead(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self.dead_done_ = True
        step = trainer.global_step  # optimizer steps taken, as in the symmetry findings
        paths = [act.layer for act in self._activations_]
        if not paths:
            self._report(trainer, [])
            return
        for sums in self._positive_.values():
            sums.flush()
        buffer = self._positive_buffer_  # every layer's totals, in the order of paths
        assert buffer is not None
        if trainer.world_size == 1:  # nothing to reduce: the totals' one host transfer, the rest from Python
            alive_counts = (buffer > 0).cpu().numpy()
            calls = [self._calls_[p] for p in paths]
            ambiguous = [p in self._ambiguous_ for p in paths]
        else:
            counts = (buffer > 0).to(torch.float32)
            extra = torch.tensor(
                [float(self._calls_[p]) for p in paths] + [float(p in self._ambiguous_) for p in paths],
                device=buffer.device,
            )
            reduced = trainer.strategy.reduce(torch.cat([counts, extra]), reduce_op="sum")  # collective, every rank
            assert isinstance(reduced, torch.Tensor)
            values = reduced.cpu().numpy()  # the one host transfer of the dead-unit check
            alive_counts = values[: counts.numel()]
            calls = list(values[counts.numel() :][: len(paths)])
            ambiguous = list(values[-len(paths) :])
        findings, metrics, start = [], {}, 0
        for path, n_calls, unclear in zip(paths, calls, ambiguous, strict=True):
            units = self._positive_[path].total.numel()
            alive = alive_counts[start : start + units] > 0
            start += units
            if unclear:
                self.notes_.append(f"{path}: its activation module is reused on outputs of another width: not judged")
                continue
            if not n_calls:
                self.notes_.append(f"{path}: its activation never ran in a training batch: not judged")
                continue
            dead = int(np.count_nonzero(~alive))
            fraction = dead / units
            self.dead_fraction_[path] = fraction
            metrics[f"init_audit/dead_fraction/{path}"] = fraction
            evidence = f"{dead} of {units} units ({fraction:.1%}) never positive in epoch 0"
            if dead == units:
                findings.append(Finding("dead_layer", path, evidence, step))
            elif dead:
                findings.append(Finding("dead_units", path, evidence, step))
        _logging.log_scalars(trainer, metrics)
        self._positive_, self._positive_buffer_ = {}, None
        self._report(trainer, findings)

    def _report(self, trainer: pl.Trainer, found: list[Finding]) -> None:
        self.findings_.extend(found)
        if trainer.is_global_zero:
            for finding in found:
                if finding.severity != "issue":
                    log.info(finding.message())
                elif self.on_issue == "warn":
                    warnings.warn(finding.message(), InitAuditWarning, stacklevel=_user_stacklevel())
                elif self.on_issue == "log":
                    log.warning(finding.message())
        done = self.symmetry_done_ and (self.dead_done_ or not self.dead_units)
        if done and not self.summarised_:
            self.summarised_ = True
            _logging.log_text(trainer, "init_audit/report", markdown_report(self.findings_, self.notes_))
            rank_zero_info(summary(self.findings_, self.layers_checked_, self.steps_judged))
        issues = [f for f in found if f.severity == "issue"]
        if self.on_issue == "raise" and issues:
            raise InitAuditError(issues)  # on every rank: the findings are the same everywhere

    @property
    def steps_judged(self) -> int | None:
        """Optimizer steps after which the identical units were judged (None before, or when not judged)."""
        if self.symmetry_step_ is None:
            return None
        return self.symmetry_step_ - (self.baseline_step_ or 0)

    @property
    def issues(self) -> list[Finding]:
        """The findings of severity ``"issue"``."""
        return [f for f in self.findings_ if f.severity == "issue"]
