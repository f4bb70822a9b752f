"""SparsityConfig: validation errors name the field, and every serialisation round-trips."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

from hf_sparse import SparsityConfig, apply_recipe


def test_defaults_resolve_sparsity():
    assert SparsityConfig().sparsity == 0.9
    assert SparsityConfig(pattern="2:4").sparsity == 0.5
    assert SparsityConfig(pattern="1:4").sparsity == 0.75


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=-0.1), "sparsity"),
        (dict(sparsity="0.5"), "sparsity"),
        (dict(method="nope"), "unknown method 'nope'.*gmp"),
        (dict(allocation="random"), "allocation must be one of"),
        (dict(pattern="4:2"), "N <= M"),
        (dict(pattern="two:four"), "pattern must be"),
        (dict(pattern="2:4", sparsity=0.9), "fixes sparsity"),
        (dict(pattern="2:4", allocation="erk"), "allocation='uniform'"),
        (dict(start=0.8, end=0.2), "start"),
        (dict(start=50, end=10), "start"),
        (dict(end=1.5), "end=1.5"),
        (dict(update_every=0), "update_every"),
        (dict(method_args={"bogus": 1}), "unknown method_args \\['bogus'\\]"),
        (dict(method_args="{not json"), "method_args"),
        (dict(targets=["("]), "invalid regex"),
        (dict(initial_sparsity=0.95, sparsity=0.9), "initial_sparsity"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SparsityConfig(**kwargs)


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="method_args"):
        SparsityConfig(method_args=[1, 2])
    with pytest.raises(TypeError, match="start"):
        SparsityConfig(start="soon")
    with pytest.raises(TypeError, match="update_every"):
        SparsityConfig(update_every=2.5)


def test_start_end_fraction_or_step():
    config = apply_recipe(SparsityConfig(start=0.1, end=300.0, update_every=10, recipe="none"))  # 'auto' scales steps
    assert config.end == 300 and isinstance(config.end, int)
    assert config.resolve_step(config.start, 1000) == 100
    assert config.resolve_step(config.end, 1000) == 300
    assert config.resolve_step(1.0, 1000) == 1000  # 1.0 is a fraction, 1 a step
    assert apply_recipe(SparsityConfig(start=1, end=1, recipe="none")).resolve_step(1, 1000) == 1


def test_dict_json_and_folder_round_trips(tmp_path):
    config = SparsityConfig(
        method="gmp", sparsity=0.8, allocation="erk", targets=["encoder"], ignore=["pooler"], start=10, end=0.5,
        update_every=7, seed=3,
    )
    assert SparsityConfig.from_dict(config.to_dict()) == config
    config.to_json_file(tmp_path / "c.json")
    assert SparsityConfig.from_json_file(tmp_path / "c.json") == config
    config.save_pretrained(tmp_path / "dir")
    assert SparsityConfig.from_pretrained(tmp_path / "dir") == config
    data = json.loads((tmp_path / "dir" / "sparsity_config.json").read_text())
    assert data["start"] == 10 and data["end"] == 0.5


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown SparsityConfig fields \\['sparsty'\\]"):
        SparsityConfig.from_dict({"sparsty": 0.5})


def test_from_pretrained_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="sparsity_config.json"):
        SparsityConfig.from_pretrained(tmp_path)
    (tmp_path / "sparsity_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        SparsityConfig.from_pretrained(tmp_path)


def test_hf_argument_parser_flags():
    parser = HfArgumentParser(SparsityConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--sparsity", "0.8", "--method", "oneshot", "--allocation", "global", "--targets", "encoder", "attention",
         "--start", "100", "--end", "0.5", "--method_args", "{}"]
    )
    assert config.sparsity == 0.8 and config.method == "oneshot" and config.allocation == "global"
    assert config.targets == ["encoder", "attention"]
    assert config.start == 100 and isinstance(config.start, int) and config.end == 0.5
    assert "--update_every" in parser.format_help()
