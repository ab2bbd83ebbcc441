"""Generated documentation stays current."""

from __future__ import annotations

from pathlib import Path

from metatide.extractor.cli.specdoc import render

ROOT = Path(__file__).resolve().parents[2]


def test_spec_reference_is_current() -> None:
    committed = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    assert committed == render(), "regenerate with: uv run metatide spec-docs > docs/spec.md"


def test_every_spec_field_is_described() -> None:
    page = render()
    assert "|  |" not in page  # no field without a description
