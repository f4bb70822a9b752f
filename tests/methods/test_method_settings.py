"""Typed method settings: every method's Args is typed, documented and checked; the README table is generated."""

from __future__ import annotations

import dataclasses
import os

import pytest

from hf_sparse import SparsityConfig, available_methods, get_method_class
from hf_sparse.methods.settings import (
    describe_method,
    methods_table,
    parse_method_args,
    replace_table,
    resolved_method_args,
    settings_of,
    table_in,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", available_methods())
def test_every_option_is_typed_documented_and_defaulted(name):
    cls = get_method_class(name)
    assert dataclasses.is_dataclass(cls.Args) and cls.summary
    for f in dataclasses.fields(cls.Args):
        assert f.metadata.get("help"), f"{name}: method_args.{f.name} has no help"
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
    parse_method_args(cls, {})  # the defaults are valid
    assert resolved_method_args(cls, None) == {s.name: s.default for s in settings_of(cls)}


def test_dicts_and_json_strings_are_checked_against_the_dataclass():
    rigl = get_method_class("rigl")
    assert parse_method_args(rigl, '{"drop_fraction": 0.1}').drop_fraction == 0.1
    assert parse_method_args(rigl, {"init": "magnitude"}).init == "magnitude"
    with pytest.raises(ValueError, match=r"method 'rigl': unknown method_args \['drop'\]; valid keys: \['drop_fraction', "):
        parse_method_args(rigl, {"drop": 0.1})
    with pytest.raises(ValueError, match=r"method 'rigl': method_args.drop_fraction must be of type float"):
        parse_method_args(rigl, {"drop_fraction": "0.1"})
    with pytest.raises(ValueError, match="method 'rigl': method_args must be a dict or a JSON object string"):
        parse_method_args(rigl, "{not json")


@pytest.mark.parametrize(
    "method,args,field",
    [
        ("cyclic", {"cycles": 1.5}, "cycles"),  # an int option
        ("east", {"dyrelu": 1}, "dyrelu"),  # a bool option: 1 is not true
        ("gmp", {"criterion": 3}, "criterion"),
        ("gmp", {"initial_jump": True}, "initial_jump"),  # Optional[float]: a bool is no number
        ("acdc", {"warmup": "10%"}, "warmup"),  # int | float
        ("constant", {"masks_from": None}, "masks_from"),
        ("dst_ee", {"exploration": -1.0}, "exploration"),  # right type, out of range: __post_init__
    ],
)
def test_a_bad_value_names_its_field(method, args, field):
    with pytest.raises(ValueError, match=rf"{field}"):
        SparsityConfig(method=method, method_args=args, recipe="none")


def test_int_is_a_float_and_optional_takes_none():
    assert parse_method_args(get_method_class("cyclic"), {"ratio": 2}).ratio == 2
    assert parse_method_args(get_method_class("gmp"), {"initial_jump": None}).initial_jump is None
    assert parse_method_args(get_method_class("acdc"), {"warmup": 10}).warmup == 10


def test_describe_lists_every_option_with_its_help():
    text = describe_method(get_method_class("dst_ee"))
    for setting in settings_of(get_method_class("dst_ee")):
        assert f"{setting.name} (" in text and setting.help in text


def test_readme_methods_table_is_up_to_date():
    """Fails when a method or an option changed and README.md was not regenerated:
    python -m hf_sparse config --methods --readme README.md"""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    expected = methods_table([get_method_class(name) for name in available_methods()])
    assert table_in(readme) == expected
    assert all(f"| `{name}` |" in expected for name in available_methods())


def test_replace_table_only_touches_the_block():
    text = "intro\n" + replace_table(
        "a\n<!-- methods table: generated from each method's Args by `python -m hf_sparse config --methods --readme "
        "README.md` -->\nold\n<!-- end of the generated methods table -->\nb\n", "new")
    assert table_in(text) == "new" and text.startswith("intro\na\n") and text.endswith("\nb\n")
    with pytest.raises(ValueError, match="markers"):
        replace_table("no markers", "new")
