"""Fault injection is a test hook: honoured only beside the harness variable, loud otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from metatide.extractor.cli import faults


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "_warned", False)
    monkeypatch.delenv(faults.VARIABLE, raising=False)
    monkeypatch.delenv(faults.HARNESS_VARIABLE, raising=False)


def test_the_harness_variable_enables_the_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.VARIABLE, "columns:1:3")
    monkeypatch.setenv(faults.HARNESS_VARIABLE, "1")
    faults.inject("columns", 0)  # another batch: nothing happens
    with pytest.raises(SystemExit) as exited:
        faults.inject("columns", 1)
    assert exited.value.code == 3


def test_a_retryable_fault_happens_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(faults.VARIABLE, f"plan:*:75:{tmp_path / 'once'}")
    monkeypatch.setenv(faults.HARNESS_VARIABLE, "1")
    with pytest.raises(SystemExit):
        faults.inject("plan")
    faults.inject("plan")  # the marker exists: the second attempt runs normally


@pytest.mark.parametrize("harness", [None, "", "0", "true"])
def test_without_the_harness_the_fault_is_ignored_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, harness: str | None
) -> None:
    monkeypatch.setenv(faults.VARIABLE, "columns:*:3")
    if harness is not None:
        monkeypatch.setenv(faults.HARNESS_VARIABLE, harness)
    with caplog.at_level(logging.WARNING, logger="metatide"):
        faults.inject("columns", 0)
        faults.inject("columns", 1)
    warnings = [r for r in caplog.records if r.getMessage() == "fault_injection_ignored"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_nothing_is_logged_without_a_fault(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        faults.inject("plan")
    assert caplog.records == []
