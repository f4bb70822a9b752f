"""Names that moved keep working where they used to live, as the same objects."""

from __future__ import annotations

import importlib
import sys

import pytest


def fresh(module: str):
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def test_recipe_module_warns_and_gives_the_recipe_defaults():
    from hf_sparse.methods import recipe_defaults

    with pytest.warns(DeprecationWarning, match="hf_sparse.methods.recipe_defaults"):
        old = fresh("hf_sparse.recipe")
    for name in ("PLAIN_DEFAULTS", "RECIPE_UPDATES", "recommend_schedule_scale", "resolve_recipe"):
        assert getattr(old, name) is getattr(recipe_defaults, name), name


def test_core_sparsifier_name_warns_and_is_the_public_sparsifier():
    import hf_sparse
    import hf_sparse.core.sparsifier as core

    with pytest.warns(DeprecationWarning, match="hf_sparse.Sparsifier"):
        old = core.Sparsifier
    assert old is hf_sparse.Sparsifier and issubclass(old, core.MaskEngine)
    with pytest.raises(AttributeError, match="no_such_name"):
        core.no_such_name


def test_presets_registry_and_east_aliases():
    import hf_sparse.presets
    import hf_sparse.registry
    import hf_sparse.training.presets
    import hf_sparse.vision
    import hf_sparse.vision.east
    from hf_sparse.methods import east, registry

    assert hf_sparse.training.presets.preset_fields is hf_sparse.presets.preset_fields
    assert hf_sparse.registry.get_method_class is registry.get_method_class
    assert hf_sparse.vision.east.prepare_east is east.prepare_east is hf_sparse.vision.prepare_east
    assert hf_sparse.vision.east_config is hf_sparse.presets.east_config
    assert hf_sparse.vision.east_config(0.95).method == "east"
