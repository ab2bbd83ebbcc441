"""The MySQL source's DSN parsing: what it accepts, what it refuses, and never the password."""

from __future__ import annotations

import pytest

from metatide.extractor.core.errors import SpecError
from metatide.extractor.sources.mysql import _Target

SECRET = "p@ss:w/rd%"
ENCODED = "p%40ss%3Aw%2Frd%25"


def test_a_full_dsn() -> None:
    target = _Target.parse(f"mysql://reader:{ENCODED}@db.internal:3307/shop", "DSN")
    assert (target.host, target.port, target.user, target.database) == (
        "db.internal",
        3307,
        "reader",
        "shop",
    )
    assert target.password == SECRET
    assert SECRET not in repr(target)
    assert ENCODED not in repr(target)
    assert SECRET not in target.describe()


def test_port_and_database_are_optional() -> None:
    target = _Target.parse("mariadb://reader@db", "DSN")
    assert (target.port, target.database, target.password) == (3306, None, "")


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://u:{ENCODED}@h/db", "must be a URI like mysql://"),
        (f"//u:{ENCODED}@h/db", "scheme-less"),
        (f"mysql://u:{ENCODED}@h:port/db", "invalid port"),
        (f"mysql://:{ENCODED}@h/db", "lacks a host or a user"),
        (f"mysql://u:{ENCODED}@/db", "lacks a host or a user"),
        (f"mysql://u:{ENCODED}@h/db?ssl-mode=REQUIRED", "source.tls"),
    ],
)
def test_bad_dsns_are_spec_errors_that_name_the_variable(dsn: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        _Target.parse(dsn, "SHOP_DSN")
    message = str(caught.value)
    assert expected in message
    assert "$SHOP_DSN" in message
    assert ENCODED not in message
    assert SECRET not in message
