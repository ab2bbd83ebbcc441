"""The marker: the source-clock time up to which the committed state is known to be current.

Plan takes the *next* marker from the source database's clock before listing anything, so a
DDL change that lands while the run is under way has a DDL time after that marker and is
seen again by the next run. Comparisons use the stored marker minus `preponeHours`, which
absorbs clock skew and transactions that committed DDL with an earlier timestamp.
``marker.txt`` holds the bare formatted marker for older consumers; the manifest holds the
authoritative copy, because it is written in the same atomic commit as the state.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from metatide.extractor.core.errors import SpecError

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MARKER_KEY = "marker.txt"


def format_marker(moment: datetime, fmt: str = ISO_FORMAT) -> str:
    """A marker as text; seconds precision like the seed's marker.txt."""
    return moment.astimezone(UTC).strftime(fmt)


def default_marker(text: str, fmt: str) -> datetime:
    """The marker assumed before the first run, from the spec."""
    try:
        return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    except ValueError as exc:
        raise SpecError(f"marker.default {text!r} does not match marker.format {fmt!r}") from exc


def effective_marker(marker: datetime, prepone_hours: float) -> datetime:
    """The time DDL and creation times are compared against: the marker moved earlier."""
    return marker - timedelta(hours=prepone_hours)


def truncate_to_seconds(moment: datetime) -> datetime:
    """The marker as it will be stored: later comparisons must not depend on lost precision."""
    return moment.astimezone(UTC).replace(microsecond=0)
