"""Checking a status view against the ``TypedDict`` that documents it.

mypy holds the code that builds a view to its type; this holds what a caller
actually receives (a returned value, a JSON answer) to it: every required
key present, no key the type does not name, and each value of its declared
type, all the way down.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

__all__ = ["assert_shape"]


def assert_shape(value: object, shape: Any, where: str = "value") -> None:
    """Fail, naming the path, where ``value`` does not have ``shape`` (a
    ``TypedDict``, or a type built from them, ``dict``, ``list``, unions,
    ``Literal`` and plain types; an ``int`` passes for a ``float``)."""
    origin = get_origin(shape)
    if shape is Any or shape is object:
        return
    if shape is None or shape is type(None):
        assert value is None, f"{where}: {value!r} is not None"
    elif origin in (Union, types.UnionType):
        for option in get_args(shape):
            try:
                assert_shape(value, option, where)
            except AssertionError:
                continue
            return
        raise AssertionError(f"{where}: {value!r} is none of {shape}")
    elif origin is Literal:
        assert value in get_args(shape), f"{where}: {value!r} is not one of {get_args(shape)}"
    elif origin in (Required, NotRequired):
        assert_shape(value, get_args(shape)[0], where)
    elif _is_typeddict(shape):
        assert isinstance(value, Mapping), f"{where}: {value!r} is not an object"
        hints = get_type_hints(shape, include_extras=True)
        missing = _required(shape, hints) - value.keys()
        unknown = value.keys() - hints.keys()
        assert not missing, f"{where}: {sorted(missing)} missing"
        assert not unknown, f"{where}: {sorted(unknown)} not in {shape.__name__}"
        for key, item in value.items():
            assert_shape(item, hints[key], f"{where}.{key}")
    elif origin in (dict, Mapping):
        key_type, item_type = get_args(shape)
        assert isinstance(value, Mapping), f"{where}: {value!r} is not an object"
        for key, item in value.items():
            assert_shape(key, key_type, f"{where} key")
            assert_shape(item, item_type, f"{where}[{key!r}]")
    elif origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            assert_shape(item, get_args(shape)[0], f"{where}[{i}]")
    elif shape is float:
        assert type(value) in (int, float), f"{where}: {value!r} is not a number"
    elif shape is int:
        # bool is an int to isinstance: a flag where a count belongs must fail.
        assert type(value) is int, f"{where}: {value!r} is not an int"
    else:
        assert isinstance(value, shape), f"{where}: {value!r} is not {shape.__name__}"


def _required(shape: Any, hints: Mapping[str, Any]) -> set[str]:
    # Under ``from __future__ import annotations`` Python 3.11 cannot see a
    # NotRequired in a TypedDict's annotations: read it from the hints.
    return {
        key
        for key, hint in hints.items()
        if get_origin(hint) is Required
        or (key in shape.__required_keys__ and get_origin(hint) is not NotRequired)
    }


def _is_typeddict(shape: Any) -> bool:
    return isinstance(shape, type) and hasattr(shape, "__required_keys__")
