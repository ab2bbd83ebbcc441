"""The marker: text round trips, parse errors are corruption, prepone, the spec's default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from metatide.extractor.core.errors import SpecError, StateCorruptError
from metatide.extractor.state.marker import (
    ISO_FORMAT,
    default_marker,
    effective_marker,
    format_marker,
    truncate_to_seconds,
)
from tests.harness import parse_marker

MOMENT = datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)


def test_default_format_is_the_seed_format() -> None:
    assert format_marker(MOMENT) == "2024-02-29T23:59:58Z"
    assert ISO_FORMAT == "%Y-%m-%dT%H:%M:%SZ"


def test_round_trip_with_the_default_format() -> None:
    text = format_marker(MOMENT)
    assert parse_marker(text) == MOMENT
    assert parse_marker(text).tzinfo is UTC


def test_round_trip_with_a_custom_format() -> None:
    fmt = "%d/%m/%Y %H.%M.%S"
    text = format_marker(MOMENT, fmt)
    assert text == "29/02/2024 23.59.58"
    assert parse_marker(text, fmt) == MOMENT


def test_format_converts_other_time_zones_to_utc() -> None:
    berlin = datetime(2024, 3, 1, 0, 59, 58, tzinfo=timezone(timedelta(hours=1)))
    assert format_marker(berlin) == "2024-02-29T23:59:58Z"


def test_parse_ignores_surrounding_whitespace() -> None:
    assert parse_marker("  2024-02-29T23:59:58Z\n") == MOMENT


def test_format_drops_sub_second_precision() -> None:
    precise = MOMENT.replace(microsecond=999_999)
    assert parse_marker(format_marker(precise)) == MOMENT
    assert truncate_to_seconds(precise) == MOMENT


@pytest.mark.parametrize("text", ["garbage", "2024-02-30T00:00:00Z", "2024-01-01 00:00:00", ""])
def test_parse_error_is_state_corruption_naming_the_value(text: str) -> None:
    with pytest.raises(StateCorruptError) as caught:
        parse_marker(text)
    message = str(caught.value)
    assert repr(text.strip()) in message
    assert ISO_FORMAT in message
    assert "fix marker.txt" not in message  # marker.txt is never read: no advice to edit it
    assert "_manifest.json" in message


def test_parse_error_with_custom_format_names_that_format() -> None:
    with pytest.raises(StateCorruptError, match=r"%d/%m/%Y"):
        parse_marker("2024-02-29T23:59:58Z", "%d/%m/%Y")


def test_effective_marker_is_moved_earlier_by_prepone_hours() -> None:
    assert effective_marker(MOMENT, 3) == MOMENT - timedelta(hours=3)
    assert effective_marker(MOMENT, 0.5) == MOMENT - timedelta(minutes=30)
    assert effective_marker(MOMENT, 0) == MOMENT


def test_default_marker_parses_the_spec_default() -> None:
    assert default_marker("1970-01-01T00:00:00Z", ISO_FORMAT) == datetime(1970, 1, 1, tzinfo=UTC)
    assert default_marker("2020/05/17", "%Y/%m/%d") == datetime(2020, 5, 17, tzinfo=UTC)


def test_bad_default_marker_is_a_spec_error_naming_value_and_format() -> None:
    with pytest.raises(SpecError) as caught:
        default_marker("yesterday", ISO_FORMAT)
    assert "'yesterday'" in str(caught.value)
    assert ISO_FORMAT in str(caught.value)
    assert "marker.default" in str(caught.value)
    assert not isinstance(caught.value, StateCorruptError)
