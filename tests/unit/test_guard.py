"""The mass-delete guard: boundaries, empty sources, and messages a person can act on."""

from __future__ import annotations

import pytest

from metatide.extractor.core.errors import EXIT_TERMINAL, MassDeleteRefusedError
from metatide.extractor.core.spec import MassDeleteGuardSpec
from metatide.extractor.engine.guard import check_mass_delete

DEFAULT = MassDeleteGuardSpec()


def test_default_allows_half() -> None:
    assert DEFAULT.max_deleted_fraction == 0.5
    assert DEFAULT.allow_empty_source is False


@pytest.mark.parametrize(
    ("previous", "deleted", "fraction"),
    [(10, 5, 0.5), (4, 1, 0.25), (3, 1, 1 / 3), (100, 30, 0.3), (7, 0, 0.0), (5, 5, 1.0)],
)
def test_deleting_exactly_the_maximum_fraction_is_allowed(
    previous: int, deleted: int, fraction: float
) -> None:
    guard = MassDeleteGuardSpec(max_deleted_fraction=fraction)
    check_mass_delete(previous, previous - deleted + 1, deleted, guard)


@pytest.mark.parametrize(("previous", "deleted"), [(10, 6), (2, 2), (1000, 501), (3, 2)])
def test_deleting_more_than_the_maximum_is_refused(previous: int, deleted: int) -> None:
    with pytest.raises(MassDeleteRefusedError) as caught:
        check_mass_delete(previous, previous - deleted + 3, deleted, DEFAULT)
    message = str(caught.value)
    assert f"delete {deleted} of {previous} tables" in message
    assert f"({deleted / previous:.0%})" in message
    assert "massDeleteGuard.maxDeletedFraction 50%" in message
    assert "--allow-mass-delete" in message
    assert "nothing was committed" in message
    assert caught.value.exit_code == EXIT_TERMINAL


def test_one_table_above_the_boundary_is_refused() -> None:
    guard = MassDeleteGuardSpec(max_deleted_fraction=0.2)
    check_mass_delete(10, 8, 2, guard)
    with pytest.raises(MassDeleteRefusedError, match="delete 3 of 10 tables"):
        check_mass_delete(10, 7, 3, guard)


def test_zero_fraction_refuses_any_deletion() -> None:
    guard = MassDeleteGuardSpec(max_deleted_fraction=0.0)
    check_mass_delete(10, 10, 0, guard)
    with pytest.raises(MassDeleteRefusedError):
        check_mass_delete(10, 9, 1, guard)


def test_fraction_one_disables_the_fraction_check() -> None:
    check_mass_delete(10, 1, 10, MassDeleteGuardSpec(max_deleted_fraction=1.0))


@pytest.mark.parametrize("current", [0, 5])
def test_zero_previous_tables_is_never_refused(current: int) -> None:
    check_mass_delete(0, current, 0, MassDeleteGuardSpec(max_deleted_fraction=0.0))


def test_empty_source_is_refused_while_the_state_has_tables() -> None:
    with pytest.raises(MassDeleteRefusedError) as caught:
        check_mass_delete(12, 0, 12, MassDeleteGuardSpec(max_deleted_fraction=1.0))
    message = str(caught.value)
    assert "zero tables" in message
    assert "holds 12" in message
    assert "massDeleteGuard.allowEmptySource: true" in message
    assert "--allow-mass-delete" in message


def test_empty_source_is_allowed_when_configured() -> None:
    check_mass_delete(12, 0, 12, MassDeleteGuardSpec(allow_empty_source=True))
