"""One real-Trainer fit per failure mode: the audit names the right finding, and a healthy control names none."""

from __future__ import annotations

import pytest

from epochkit import ShuffleAudit
from epochkit.audit import EpochVerdict
from tests.audit import _data
from tests.audit._data import AuditDataModule, fit


def codes(verdict: EpochVerdict | None) -> set[str]:
    return set() if verdict is None else {f.code for f in verdict.findings}


def epoch_codes(audit: ShuffleAudit) -> dict[int | None, set[str]]:
    return {v.epoch: codes(v) for v in audit.verdicts_}


def test_healthy_shuffled_run_has_no_finding() -> None:
    audit = ShuffleAudit(on_issue="raise")
    fit([audit], AuditDataModule())
    assert [v.epoch for v in audit.verdicts_] == [0, 1, 2]
    assert codes(audit.fit_start_) == set()
    assert all(not v.findings for v in audit.verdicts_), [v.to_dict() for v in audit.verdicts_]
    metrics = audit.verdicts_[-1].metrics
    assert metrics["coverage"] == 1.0 and metrics["duplicates"] == 0.0
    assert abs(metrics["spearman"]) < 0.3 and 0.5 < metrics["cobatch_ratio"] < 1.5


def test_shuffle_off_is_found_at_fit_start_and_the_replays_it_explains_are_noted_not_repeated() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(shuffle=False))
    assert codes(audit.fit_start_) == {"shuffle_off"}
    assert "SequentialSampler" in audit.fit_start_.findings[0].evidence
    # One finding per cause: the replays shuffle_off implies are notes, not an order_unchanged every epoch (whose
    # fix, set_epoch, would not apply to a SequentialSampler).
    assert epoch_codes(audit) == {0: set(), 1: set(), 2: set()}
    note = audit.verdicts_[2].notes[0]
    assert "order identical to epoch 1: Spearman 1.000" in note and "explained by shuffle_off at fit start" in note


def test_custom_sampler_that_never_reseeds_is_caught_between_epochs() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(sampler=_data.fixed_permutation))
    assert codes(audit.fit_start_) == set()  # a custom sampler: nothing to see before data flows
    assert epoch_codes(audit) == {0: set(), 1: {"order_unchanged"}, 2: {"order_unchanged"}}
    finding = audit.verdicts_[1].findings[0]
    assert "Spearman 1.000" in finding.evidence
    assert finding.fix.startswith("give FixedPermutationSampler a set_epoch(epoch) that reseeds it")


def test_same_batches_in_a_new_order_are_caught_by_the_cobatch_ratio() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(batch_sampler=_data.shuffled_batches))
    # Each batch also kept its inner order, so most successors survived too: one cause, one finding.
    assert epoch_codes(audit)[1] == {"batches_unchanged"}
    assert "12 of 12 batches identical as sets" in audit.verdicts_[1].findings[0].evidence
    assert abs(audit.verdicts_[1].metrics["spearman"]) < 0.3  # Spearman alone would have missed it
    assert audit.verdicts_[1].metrics["cobatch_ratio"] > 5  # (n - 1) / (B - 1) = 12.7 for 192 samples in 16s


def test_rotated_order_is_caught_by_preserved_successors() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(sampler=_data.rotating))
    # Batches straddle the shift, so half the same-batch pairs also meet again: the same cause, not reported twice.
    assert epoch_codes(audit)[1] == {"successors_preserved"}
    assert "the order was rotated or shifted" in audit.verdicts_[1].findings[0].evidence
    assert abs(audit.verdicts_[1].metrics["spearman"]) < 0.2  # Spearman alone would have missed it
    assert audit.verdicts_[1].metrics["successors_preserved"] > 0.95


def test_sampling_with_replacement_by_mistake_gives_duplicates_and_missed_samples() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(sampler=_data.with_replacement), max_epochs=1)
    assert epoch_codes(audit)[0] == {"duplicate_samples", "incomplete_coverage"}
    assert 0.55 < audit.verdicts_[0].metrics["coverage"] < 0.75  # about 1 - 1/e of the data


@pytest.mark.parametrize("labels", [None, 1], ids=["dataset_targets", "batch_key"])
def test_data_sorted_by_label_is_caught_in_epoch_0(labels: int | None) -> None:
    audit = ShuffleAudit(on_issue="log", labels=labels, ignore=["shuffle_off"])
    fit([audit], AuditDataModule(shuffle=False, sort_by_label=True), max_epochs=1)
    assert epoch_codes(audit)[0] == {"sorted_labels", "class_blocked_batches"}
    assert "label-change rate 0.016" in audit.verdicts_[0].findings[0].evidence  # 3 changes in 191 pairs


def test_class_blocked_batches_are_caught_by_batch_entropy() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(batch_sampler=_data.class_blocks), max_epochs=1)
    assert "class_blocked_batches" in epoch_codes(audit)[0]
    assert audit.verdicts_[0].metrics["batch_entropy_ratio"] == 0.0


def test_iterable_dataset_replicated_across_workers_is_caught_by_fingerprints() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(kind="stream", num_workers=2), max_epochs=1)
    assert {(f.code, f.severity) for f in audit.fit_start_.findings} == {("iterable_workers", "notice")}
    assert epoch_codes(audit)[0] == {"iterable_replicated"}
    assert "192 of 384 samples drawn were repeats" in audit.verdicts_[0].findings[0].evidence

    control = ShuffleAudit(on_issue="log")
    fit([control], AuditDataModule(kind="sharded_stream", num_workers=2), max_epochs=1)
    assert epoch_codes(control)[0] == set()


def test_persistent_workers_hide_a_dataset_level_set_epoch() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(kind="epoch_aware", num_workers=1, persistent_workers=True), max_epochs=1)
    assert codes(audit.fit_start_) == {"persistent_workers_set_epoch"}
    assert epoch_codes(audit)[0] == set()


def test_oversampling_without_replacement_is_not_duplicates_or_missed_samples() -> None:
    # RandomSampler(num_samples=2N) draws every sample twice: the data set size is 160 (the data set), not the
    # sampler's length (320), so the repeats are allowed and nothing is missed.
    audit = ShuffleAudit(on_issue="raise")
    fit([audit], AuditDataModule(n=160, sampler=_data.oversampling), max_epochs=2)
    assert audit.configs_["train_dataloader"][0]["dataset_size"] == 160
    assert all(not v.findings for v in audit.verdicts_), [v.to_dict() for v in audit.verdicts_]
    assert audit.verdicts_[0].metrics["coverage"] == 1.0


def test_a_custom_batch_sampler_is_judged_against_the_data_set_not_its_batch_count() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(n=160, batch_sampler=_data.half_with_repeats_batches), max_epochs=1)
    assert audit.configs_["train_dataloader"][0]["dataset_size"] == 160  # not len(batch_sampler) == 6
    assert epoch_codes(audit)[0] == {"duplicate_samples", "incomplete_coverage"}


def test_a_custom_sampler_shorter_than_the_data_says_how_much_was_never_drawn() -> None:
    audit = ShuffleAudit(on_issue="log")
    fit([audit], AuditDataModule(n=160, sampler=_data.half_with_repeats), max_epochs=1)
    assert audit.configs_["train_dataloader"][0]["dataset_size"] == 160  # not len(sampler) == 96
    assert epoch_codes(audit)[0] == {"duplicate_samples", "incomplete_coverage"}
    evidence = next(f.evidence for f in audit.verdicts_[0].findings if f.code == "incomplete_coverage")
    assert "80 of the data set's 160 were not drawn at all" in evidence
