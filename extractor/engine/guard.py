"""The mass-delete guard: refuse, before anything is committed, a run that deletes too much.

A revoked grant, a mistyped filter or an empty replica looks to an extractor exactly like a
dropped schema. The seed committed such runs and consumers deleted their catalog; here the
run fails with a terminal error that names the numbers and the setting that overrides it.
"""

from __future__ import annotations

from metatide.extractor.core.errors import MassDeleteRefusedError
from metatide.extractor.core.spec import MassDeleteGuardSpec


def check_mass_delete(
    previous_tables: int, current_tables: int, deleted_tables: int, guard: MassDeleteGuardSpec
) -> None:
    """Raise MassDeleteRefusedError when the run would delete more than the guard allows."""
    if previous_tables == 0:
        return
    if current_tables == 0 and not guard.allow_empty_source:
        raise MassDeleteRefusedError(
            f"the source returned zero tables in scope while the state holds {previous_tables}; "
            "nothing was committed. If the source really is empty, rerun with "
            "massDeleteGuard.allowEmptySource: true (CLI: --allow-mass-delete)"
        )
    fraction = deleted_tables / previous_tables
    if fraction > guard.max_deleted_fraction and current_tables > 0:
        raise MassDeleteRefusedError(
            f"this run would delete {deleted_tables} of {previous_tables} tables "
            f"({fraction:.0%}), more than massDeleteGuard.maxDeletedFraction "
            f"{guard.max_deleted_fraction:.0%}; nothing was committed. If intended, rerun with a "
            "higher massDeleteGuard.maxDeletedFraction (CLI: --allow-mass-delete)"
        )
