"""The check that holds status views to their TypedDicts (tests/_shapes.py)
fails where a view strays from its type."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

import pytest

from tests._shapes import assert_shape


class Inner(TypedDict):
    count: int
    rate: float


class Outer(TypedDict):
    state: Literal["ok", "down"]
    inner: dict[str, Inner]
    names: list[str]
    note: str | None
    extra: NotRequired[bool]


GOOD: Outer = {
    "state": "ok",
    "inner": {"a": {"count": 1, "rate": 2}},
    "names": ["x"],
    "note": None,
}


def test_a_view_of_its_shape_passes_with_or_without_its_optional_keys() -> None:
    assert_shape(GOOD, Outer)
    assert_shape({**GOOD, "extra": True, "note": "n"}, Outer)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({k: v for k, v in GOOD.items() if k != "names"}, "value: ['names'] missing"),
        ({**GOOD, "other": 1}, "value: ['other'] not in Outer"),
        ({**GOOD, "state": "stopped"}, "value.state"),
        ({**GOOD, "inner": {"a": {"count": True, "rate": 1.5}}}, "value.inner['a'].count"),
        ({**GOOD, "inner": {"a": {"count": 1, "rate": "1"}}}, "value.inner['a'].rate"),
        ({**GOOD, "names": [1]}, "value.names[0]"),
        ({**GOOD, "note": 3}, "value.note"),
        ({**GOOD, "extra": 1}, "value.extra"),
    ],
)
def test_a_view_that_strays_from_its_shape_fails_naming_where(bad: object, where: str) -> None:
    with pytest.raises(AssertionError, match=where.replace("[", r"\[")):
        assert_shape(bad, Outer)
