"""SparsityConfig: what the user asked for, validated at the boundary, JSON-serialisable.

The config holds fields and their validation (the method's class checks ``method_args``, with the keys the
recipe would add). Fields
left at "auto" stay "auto" here: the sparse-aware recipe fills them from outside
(:func:`hf_sparse.methods.recipe_defaults.apply_recipe`, called by ``Sparsifier``, ``SparseTrainer``,
``SparsityArguments`` and ``python -m hf_sparse config``), which returns a filled copy whose
``recipe_choices`` say what the recipe chose. ``resolve_step`` and ``update_interval`` turn fractions
of the run into steps. Schedules, allocation and methods read a filled config.
Fields carry ``metadata={"help": ...}`` so ``HfArgumentParser`` turns them into flags.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .core.choices import ALLOCATIONS, INITIAL_MASKS, LR_SHAPES  # noqa: F401  (public here too)
from .io.files import atomic_write_text
from .methods.recipe_defaults import RECIPE_UPDATES, recipe_values
from .methods.registry import get_method_class
from .presets import preset_fields

logger = logging.getLogger(__name__)

CONFIG_NAME = "sparsity_config.json"
AUTO = "auto"
RECIPES = ("auto", "none")
_NM_RE = re.compile(r"^(\d+):(\d+)$")


def parse_nm(pattern: str) -> Optional[tuple[int, int]]:
    """Return (N, M) for an "N:M" pattern, None for "unstructured"."""
    if pattern == "unstructured":
        return None
    match = _NM_RE.match(pattern)
    if match is None:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' (e.g. '2:4'), got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n <= m:
        raise ValueError(f"pattern {pattern!r}: need 0 < N <= M")
    return n, m


@dataclass
class SparsityConfig:
    """How a model is made sparse during training.

    ``start``/``end``: a float in [0, 1] is a fraction of the run's optimizer steps, an int
    (or a float > 1 with no fractional part, as the command line gives) is a step number.
    """

    method: str = field(default="gmp", metadata={"help": "Registered pruning method (gmp, oneshot, ...)."})
    sparsity: Optional[float] = field(
        default=None,
        metadata={"help": "Final fraction of zeros over targeted weights, in [0, 1). Default 0.9, or 1-N/M for N:M."},
    )
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity at the start of the schedule."})
    pattern: str = field(default="unstructured", metadata={"help": "'unstructured' or 'N:M' (e.g. '2:4')."})
    recipe: str = field(
        default="auto",
        metadata={
            "help": "'auto': the sparse-aware defaults (hf_sparse.methods.recipe_defaults; how it is measured: docs/measurement.md) "
            "fills every field left unset (allocation, schedule_scale, lr_rewinding, update_every) and adds "
            "method_args keys (gmp's criterion='fisher') with the method's measured recipe (gmp); 'none': the plain "
            "defaults and exactly your TrainingArguments."
        },
    )
    allocation: str = field(
        default="auto", metadata={"help": "Per-layer allocation: uniform, global or erk ('auto': the recipe's choice)."}
    )
    layer_floor: float = field(
        default=0.05,
        metadata={"help": "Every targeted tensor keeps at least layer_floor x (1 - sparsity) of its weights, whatever the "
                  "allocation (a global threshold can otherwise prune whole layers away); taken from the rest of the "
                  "budget, so the overall sparsity is unchanged. 0 turns it off. See docs/finetuning.md."},
    )
    targets: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Regexes over module names to sparsify; default every Linear/Conv weight but embeddings and heads."},
    )
    ignore: Optional[list[str]] = field(default=None, metadata={"help": "Regexes over module names to leave dense."})
    start: float = field(default=0.0, metadata={"help": "First pruning step: fraction of training in [0,1] or a step."})
    end: float = field(default=0.75, metadata={"help": "Last mask update: fraction of training in [0,1] or a step."})
    update_every: Optional[int] = field(
        default=None,
        metadata={"help": "Optimizer steps between mask updates (None or 'auto': the recipe spreads a fixed number of "
                  "updates over the pruning ramp; 100 with recipe='none')."},
    )
    method_args: Union[dict, str, None] = field(
        default=None, metadata={"help": "Method-specific options as a dict or JSON string; validated by the method."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sparsity generator (random masks, random growth)."})
    initial_masks: str = field(
        default="auto",
        metadata={
            "help": "Masks at the start of a fresh run: 'auto' (hf_sparse metadata of the model if any, else its "
            "exact zeros when at least 1 percent of targeted weights are zero, else dense), 'zeros', 'metadata' or 'dense'. "
            "Pruned weights never regrow unless the method grows by design."
        },
    )
    sync_masks: bool = field(
        default=True, metadata={"help": "Broadcast masks from rank 0 after each update (a no-op on one process)."}
    )
    schedule_scale: Optional[float] = field(
        default=None,
        metadata={
            "help": "Train k times longer (SparseTrainer scales max_steps/epochs, integer start/end, update_every "
            "and integer warmup_steps by k). None or 'auto': hf_sparse.recommend_schedule_scale(sparsity) under "
            "recipe='auto', 1 under recipe='none'."
        },
    )
    lr_rewinding: Optional[str] = field(
        default="auto",
        metadata={
            "help": "LR rewinding aligned to mask updates: None or 'none' (the Trainer's lr_scheduler_type), 'linear' or "
            "'cosine' decay from the peak LR to lr_floor * peak within each pruning interval; 'auto': the recipe's choice."
        },
    )
    lr_floor: float = field(
        default=0.1, metadata={"help": "LR rewinding: end of each interval's decay, as a fraction of the peak LR."}
    )

    def __post_init__(self) -> None:
        self._normalise_types()
        nm = parse_nm(self.pattern)
        if self.sparsity is None:
            self.sparsity = 1.0 - nm[0] / nm[1] if nm else 0.9
        self._check_fraction("sparsity", self.sparsity)
        #: What the recipe filled in ({field: value}; empty for recipe='none' or a config with no 'auto' left);
        #: None until ``hf_sparse.methods.recipe_defaults.apply_recipe`` has filled this config.
        self.recipe_choices: Optional[dict[str, Any]] = None
        self._check_fraction("initial_sparsity", self.initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed sparsity ({self.sparsity})"
            )
        if nm is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ValueError(
                f"pattern {self.pattern!r} fixes sparsity at {1 - nm[0] / nm[1]:g}; got sparsity={self.sparsity}"
            )
        if self.allocation not in (*ALLOCATIONS, AUTO):
            raise ValueError(f"allocation must be one of {ALLOCATIONS} or 'auto', got {self.allocation!r}")
        if isinstance(self.layer_floor, bool) or not isinstance(self.layer_floor, (int, float)) or not 0 <= self.layer_floor <= 1:
            raise ValueError(f"layer_floor must be a number in [0, 1] (a fraction of 1 - sparsity), got {self.layer_floor!r}")
        if nm is not None and self.allocation not in ("uniform", AUTO):
            raise ValueError(f"pattern {self.pattern!r} needs allocation='uniform', got {self.allocation!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (a fraction in [0, 1] or a step), got {value}")
        if self.is_step(self.start) == self.is_step(self.end) and self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be after end ({self.end})")
        if self.initial_masks not in INITIAL_MASKS:
            raise ValueError(f"initial_masks must be one of {INITIAL_MASKS}, got {self.initial_masks!r}")
        if self.update_every is not None and self.update_every < 1:
            raise ValueError(f"update_every must be >= 1 or None ('auto'), got {self.update_every}")
        for name in ("targets", "ignore"):
            for pattern in getattr(self, name) or []:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name}: invalid regex {pattern!r}: {err}") from err
        self._check_fine_tuning()
        self._check_method_args()

    def _check_method_args(self) -> None:
        """The method checks ``method_args`` as the run will see them: with the keys the recipe adds where the
        user gave none (``fisher_estimate`` alone is valid under recipe='auto', which sets ``criterion='fisher'``).
        The check reads a copy; this config keeps its "auto" fields."""
        run_view = copy.copy(self)
        for name, value in recipe_values(self)[0].items():
            setattr(run_view, name, value)
        get_method_class(self.method).validate_config(run_view)

    def _check_fine_tuning(self) -> None:
        """Schedule scale and LR rewinding (sparse-aware fine-tuning, ``docs/finetuning.md``)."""
        scale = self.schedule_scale
        if scale is not None:  # None: "auto", the recipe's
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 1.0:
                raise ValueError(f"schedule_scale must be a number >= 1 (1 = the run as given) or 'auto', got {scale!r}")
            self.schedule_scale = float(scale)
        if self.lr_rewinding in ("", "none", "None"):
            self.lr_rewinding = None
        if self.lr_rewinding is not None and self.lr_rewinding not in (*LR_SHAPES, AUTO):
            raise ValueError(f"lr_rewinding must be None, 'auto' or one of {LR_SHAPES}, got {self.lr_rewinding!r}")
        if isinstance(self.lr_floor, bool) or not isinstance(self.lr_floor, (int, float)) or not 0 <= self.lr_floor <= 1:
            raise ValueError(f"lr_floor must be a number in [0, 1] (fraction of the peak LR), got {self.lr_floor!r}")

    def _normalise_types(self) -> None:
        if isinstance(self.method_args, str):
            text = self.method_args.strip()
            try:
                self.method_args = json.loads(text) if text else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"method_args must be a dict or a JSON object string: {err}") from err
        if self.method_args is None:
            self.method_args = {}
        if not isinstance(self.method_args, dict):
            raise TypeError(f"method_args must be a dict, got {type(self.method_args).__name__}")
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif value is not None and not isinstance(value, (list, tuple)):
                raise TypeError(f"{name} must be a list of regex strings or None, got {type(value).__name__}")
            elif value is not None:
                setattr(self, name, list(value))
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float fraction or an int step, got {value!r}")
            if isinstance(value, float) and value > 1 and value.is_integer():
                setattr(self, name, int(value))
            elif isinstance(value, float) and value > 1:
                raise ValueError(f"{name}={value}: a fraction must lie in [0, 1]; a step must be a whole number")
        for name in ("update_every", "schedule_scale"):  # "auto" (JSON, Python) is the same as None
            if getattr(self, name) == AUTO:
                setattr(self, name, None)
        if isinstance(self.update_every, float) and self.update_every.is_integer():
            self.update_every = int(self.update_every)
        if self.update_every is not None and (not isinstance(self.update_every, int) or isinstance(self.update_every, bool)):
            raise TypeError(f"update_every must be an int or None ('auto'), got {self.update_every!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")

    @staticmethod
    def _check_fraction(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")

    @staticmethod
    def is_step(value: Union[int, float]) -> bool:
        """An int is an absolute optimizer step; a float is a fraction of the run."""
        return isinstance(value, int)

    def resolve_step(self, value: Union[int, float], total_steps: int) -> int:
        """Turn ``start``/``end`` into an optimizer step of a run of ``total_steps``.

        ``total_steps`` is the (already scaled) run length, so fractions stretch by themselves;
        a step number is multiplied by ``schedule_scale`` here, the one place steps are scaled.
        """
        self._require_filled()
        if self.is_step(value):
            return int(round(value * self.schedule_scale))
        return int(round(value * total_steps))

    def update_interval(self, start: int, end: int) -> int:
        """Optimizer steps between mask updates for a ramp from step ``start`` to ``end``.

        A number is stretched by ``schedule_scale`` (as many mask updates, each interval longer);
        None (``'auto'``) spreads ``hf_sparse.methods.recipe_defaults.RECIPE_UPDATES`` updates over the ramp, whatever its length.
        """
        self._require_filled()
        if self.update_every is None:
            return max(1, int(round((end - start) / RECIPE_UPDATES)))
        return max(1, int(round(self.update_every * self.schedule_scale)))

    def _require_filled(self) -> None:
        if self.schedule_scale is None:
            raise ValueError("schedule_scale is still 'auto': fill the config with "
                             "hf_sparse.methods.recipe_defaults.apply_recipe(config) first (Sparsifier and SparseTrainer do)")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SparsityConfig":
        """A named preset (``hf_sparse.presets``) with any field overridden, e.g. ``sparsity=0.8``."""
        return cls.from_dict({**preset_fields(name), **overrides})

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        return parse_nm(self.pattern)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparsityConfig":
        if not isinstance(data, dict):
            raise TypeError(f"expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SparsityConfig fields {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        atomic_write_text(path, self.to_json_string())

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "SparsityConfig":
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON: {err}") from err
        return cls.from_dict(data)

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "SparsityConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        return cls.from_json_file(path)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def as_sparsity_config(value: Union[SparsityConfig, dict, str, os.PathLike, None]) -> SparsityConfig:
    """The one reading of what a user passes as a sparsity config: a ``SparsityConfig``, a dict, a
    ``sparsity_config.json`` path or a folder holding one; ``None`` means the defaults."""
    if value is None:
        logger.info("no sparsity_config given, using SparsityConfig() defaults")
        return SparsityConfig()
    if isinstance(value, SparsityConfig):
        return value
    if isinstance(value, dict):
        return SparsityConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return SparsityConfig.from_pretrained(path) if os.path.isdir(path) else SparsityConfig.from_json_file(path)
    raise TypeError(f"sparsity_config must be a SparsityConfig, dict or JSON path, got {type(value).__name__}")
