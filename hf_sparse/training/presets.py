"""Deprecated alias: the named presets live in ``hf_sparse.presets`` (beside the config they fill)."""

from ..presets import PRESETS, available_presets, preset_description, preset_fields, recommend_schedule_scale  # noqa: F401
