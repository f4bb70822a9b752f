"""``SparsityArguments``: the sparsity and teacher flags of an ``HfArgumentParser`` script, in one place.

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, SparsityArguments))
    ..., sparsity_args = parser.parse_args_into_dataclasses()
    config = sparsity_args.to_sparsity_config()          # preset / JSON file, the flags on top, the recipe
    teacher = sparsity_args.teacher()                    # "auto", None or a folder / Hub id
    distillation = sparsity_args.distillation_config()   # DistillationConfig or None

Every ``SparsityConfig`` field is a flag (``--sparsity 0.9 --method rigl --method_args '{"drop_fraction": 0.1}'``),
None when not given, so that flags override a ``--preset`` or a ``--sparsity_config`` file field by field.
A field ``TrainingArguments`` has as well (``seed``) becomes ``--sparsity_<name>`` (``--sparsity_seed``).
A script changes a default with ``parser.set_defaults(sparsity=0.95, teacher_model_name_or_path="auto")``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import field
from typing import Any, Optional

from ..config import SparsityConfig
from ..methods.recipe_defaults import apply_recipe
from .distill import DistillationConfig

AUTO_TEACHER = "auto"
NO_TEACHER = ("", "none")


def _taken_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


class _SparsityArgumentsMixin:
    """What a script asks of its parsed sparsity flags."""

    #: flag name -> SparsityConfig field ("sparsity_seed" -> "seed"); set on the generated class
    FLAG_TO_FIELD: typing.ClassVar[dict[str, str]] = {}

    def given(self) -> dict[str, Any]:
        """The ``SparsityConfig`` fields given explicitly (flags, JSON keys or script defaults), by field name."""
        return {
            config_name: getattr(self, flag)
            for flag, config_name in self.FLAG_TO_FIELD.items()
            if getattr(self, flag) is not None
        }

    def to_sparsity_config(self) -> SparsityConfig:
        """A preset or a JSON file (or the defaults), then every given field on top; validated, and filled by the
        sparse-aware recipe (``apply_recipe``) so that a script reads the values the run will use."""
        overrides = self.given()
        if self.preset and self.sparsity_config:
            raise ValueError("give either --preset or --sparsity_config, not both (flags can override either)")
        if self.preset:
            config = SparsityConfig.from_preset(self.preset, **overrides)
        elif self.sparsity_config:
            base = SparsityConfig.from_json_file(self.sparsity_config).to_dict()
            config = SparsityConfig.from_dict({**base, **overrides})
        else:
            config = SparsityConfig.from_dict(overrides)
        return apply_recipe(config)

    def teacher(self) -> Optional[str]:
        """``"auto"`` (train the dense teacher first: ``train_dense_then_sparse``), None, or a folder / Hub id."""
        name = (self.teacher_model_name_or_path or "").strip()
        if name.lower() in NO_TEACHER:
            return None
        return AUTO_TEACHER if name.lower() == AUTO_TEACHER else name

    def distillation_config(self) -> Optional[DistillationConfig]:
        """``--distillation_args`` as a DistillationConfig (defaults when not given); None without a teacher."""
        if self.teacher() is None:
            if self.distillation_args:
                raise ValueError("--distillation_args needs a teacher (--teacher_model_name_or_path PATH or auto)")
            return None
        options: Any = self.distillation_args or {}
        if isinstance(options, str):
            try:
                options = json.loads(options)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"--distillation_args must be a JSON object, e.g. '{{\"temperature\": 2.0}}': {err}"
                ) from err
        if not isinstance(options, dict):
            raise ValueError(f"--distillation_args must be a JSON object, got {self.distillation_args!r}")
        known = {f.name for f in dataclasses.fields(DistillationConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"--distillation_args: unknown DistillationConfig fields {unknown}; valid: {sorted(known)}")
        return DistillationConfig(**options)


_SOURCE_FIELDS = [
    ("sparsity_config", Optional[str], field(
        default=None, metadata={"help": "A SparsityConfig JSON file; sparsity flags given as well override its fields."})),
    ("preset", Optional[str], field(
        default=None, metadata={"help": "A named preset (SparsityConfig.from_preset); sparsity flags override it."})),
    ("teacher_model_name_or_path", Optional[str], field(
        default=None,
        metadata={"help": "Dense teacher for knowledge distillation: a folder or Hub id of a model fine-tuned on the "
                          "task; 'auto': fine-tune the model densely first, then prune a copy of it while distilling "
                          "from it (hf_sparse.train_dense_then_sparse); 'none' or unset: no teacher."})),
    ("distillation_args", Optional[str], field(
        default=None, metadata={"help": "DistillationConfig fields as a JSON object (with a teacher)."})),
]


def _flag_type(name: str, kind: Any) -> Any:
    if name == "method_args":
        return str  # a JSON object string on the command line (a dict in a JSON args file)
    if typing.get_origin(kind) is typing.Union:
        return next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _make_class() -> type:
    hints = typing.get_type_hints(SparsityConfig)
    taken = _taken_names() | {name for name, _, _ in _SOURCE_FIELDS}
    specs, flag_to_field = [], {}
    for f in dataclasses.fields(SparsityConfig):
        flag = f"sparsity_{f.name}" if f.name in taken else f.name
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") + (f" (SparsityConfig default: {default})" if default is not None else "")
        if f.name == "method_args":
            help_text += " Each method's options: python -m hf_sparse config --method NAME --explain."
        specs.append((flag, Optional[_flag_type(f.name, hints[f.name])], field(default=None, metadata={"help": help_text})))
        flag_to_field[flag] = f.name
    cls = dataclasses.make_dataclass(
        "SparsityArguments", specs + _SOURCE_FIELDS, bases=(_SparsityArgumentsMixin,),
        namespace={"FLAG_TO_FIELD": flag_to_field, "__doc__": __doc__, "__module__": __name__},
    )
    return cls


SparsityArguments = _make_class()
