"""SparsityArguments: the flags of an HfArgumentParser script -> SparsityConfig, teacher, distillation."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_sparse import SparsityArguments, SparsityConfig, apply_recipe


def parse(*flags, **defaults):
    parser = HfArgumentParser((TrainingArguments, SparsityArguments))
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=["--output_dir", "x", *flags])


def test_every_config_field_is_a_flag():
    flags = {f.name for f in dataclasses.fields(SparsityArguments)}
    for f in dataclasses.fields(SparsityConfig):
        assert f.name in flags or f"sparsity_{f.name}" in flags, f.name
    assert "sparsity_seed" in flags and "seed" not in flags  # TrainingArguments has --seed
    assert SparsityArguments().given() == {}
    assert SparsityArguments().to_sparsity_config().to_dict() == apply_recipe(SparsityConfig()).to_dict()


def test_flags_map_to_the_config():
    training, args = parse("--sparsity", "0.8", "--method", "rigl", "--method_args", '{"drop_fraction": 0.1}',
                           "--sparsity_seed", "7", "--seed", "3", "--targets", "query", "key", "--start", "20")
    config = args.to_sparsity_config()
    assert (config.sparsity, config.method, config.seed, training.seed) == (0.8, "rigl", 7, 3)
    assert config.method_args == {"drop_fraction": 0.1} and config.targets == ["query", "key"] and config.start == 20
    with pytest.raises(ValueError, match="method 'rigl': unknown method_args \\['drop'\\]"):
        parse("--method", "rigl", "--method_args", '{"drop": 0.1}')[1].to_sparsity_config()


def test_file_and_preset_with_flags_on_top(tmp_path):
    path = tmp_path / "sc.json"
    SparsityConfig(sparsity=0.7, update_every=3, allocation="global").to_json_file(path)
    config = parse("--sparsity_config", str(path), "--allocation", "erk")[1].to_sparsity_config()
    assert (config.sparsity, config.update_every, config.allocation) == (0.7, 3, "erk")
    config = parse("--preset", "acdc", "--sparsity", "0.8")[1].to_sparsity_config()
    assert (config.method, config.sparsity, config.recipe) == ("acdc", 0.8, "none")
    with pytest.raises(ValueError, match="either --preset or --sparsity_config"):
        parse("--preset", "acdc", "--sparsity_config", str(path))[1].to_sparsity_config()


def test_script_defaults_and_teacher_flags():
    _, args = parse(sparsity=0.95, teacher_model_name_or_path="auto")
    assert args.to_sparsity_config().sparsity == 0.95 and args.teacher() == "auto"
    assert args.distillation_config() == args.distillation_config().__class__()  # the defaults
    _, args = parse("--teacher_model_name_or_path", "out/dense", "--distillation_args", '{"temperature": 3}')
    assert args.teacher() == "out/dense" and args.distillation_config().temperature == 3
    _, args = parse("--teacher_model_name_or_path", "none")
    assert args.teacher() is None and args.distillation_config() is None
    with pytest.raises(ValueError, match="--distillation_args needs a teacher"):
        parse("--distillation_args", '{"temperature": 3}')[1].distillation_config()
    with pytest.raises(ValueError, match="unknown DistillationConfig fields \\['temp'\\]"):
        parse("--teacher_model_name_or_path", "auto", "--distillation_args", '{"temp": 3}')[1].distillation_config()
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse("--teacher_model_name_or_path", "auto", "--distillation_args", "{bad")[1].distillation_config()
