"""PruningMethod: the small interface every method implements.

A method decides how masks evolve; it never touches the optimizer or files. Its one contact with
the Trainer is ``prepare_model``: it may change the model before training (EAST's weight sharing and
DyReLU) and return TrainerCallbacks that ``SparseTrainer`` adds. The engine (``MaskEngine``) calls
``setup`` once the run length is known, ``init_masks`` at the start of training, and
``update_masks`` on steps where ``is_update_step`` is true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Optional, Union

import torch

from ..core.allocation import Allocation
from .schedules import UpdateSteps
from .settings import parse_method_args
from ..core.targets import Target

if TYPE_CHECKING:
    from ..config import SparsityConfig
    from ..core.calibration import GradientRequest
    from ..core.starting_masks import ExistingMasks

Masks = dict[str, torch.Tensor]


@dataclass
class NoArgs:
    """A method without options."""


class PruningMethod:
    """Base class. Subclasses set ``Args`` (a dataclass of ``method_args``) and override hooks."""

    name: ClassVar[str] = "base"
    #: The method's options (``method_args``): a dataclass whose fields carry a type, a default and
    #: ``metadata={"help": ...}``; ``config`` and the README's methods table are generated from it.
    Args: ClassVar[type] = NoArgs
    #: One line for the README's methods table and ``python -m hf_sparse config --methods``.
    summary: ClassVar[str] = ""
    #: The paper the method follows, by title ("" when none).
    paper: ClassVar[str] = ""
    supports_nm: ClassVar[bool] = True
    #: Whether update steps need the dense gradient of every targeted weight (RigL-style growth).
    needs_gradients: ClassVar[bool] = False
    #: Whether pruned weights can come back (regrowth, dense phases): frozen targets (a LoRA base)
    #: cannot retrain them, and their values would not be recoverable from the masks on resume.
    needs_trainable_targets: ClassVar[bool] = False
    #: Why the method cannot train under FSDP2 (None: it can); ``SparseTrainer`` refuses with it.
    fsdp_refusal: ClassVar[Optional[str]] = None

    # -- validation at the config boundary ----------------------------------------------------
    @classmethod
    def parse_args(cls, method_args: Union[Mapping[str, Any], str, None]) -> Any:
        """``method_args`` (a dict or a JSON string) checked against ``Args`` and built (``methods.settings``)."""
        return parse_method_args(cls, method_args)

    @classmethod
    def validate_config(cls, config: "SparsityConfig") -> None:
        cls.parse_args(config.method_args or {})
        if config.nm is not None and not cls.supports_nm:
            raise ValueError(f"method {cls.name!r} does not support pattern={config.pattern!r}; use 'unstructured'")

    @classmethod
    def recipe_defaults(cls, config: "SparsityConfig") -> dict[str, Any]:
        """Values of the sparse-aware recipe (``SparsityConfig(recipe="auto")``) for this method.

        Keys are ``SparsityConfig`` fields a user may leave at ``"auto"`` (allocation, schedule_scale,
        lr_rewinding, update_every), and ``method_args``: keys added where the user gave none. The base
        returns nothing: a method opts in once its recipe is measured (``hf_sparse.methods.recipe_defaults``); until then
        ``"auto"`` means its plain defaults.
        """
        return {}

    @classmethod
    def prepare_model(cls, model: Any, config: "SparsityConfig") -> list:
        """Change the model before targets and optimizer exist (e.g. EAST's DyReLU, weight sharing).

        Returns extra ``TrainerCallback``s that ``SparseTrainer`` adds. Default: nothing to do.
        """
        return []

    # -- life cycle -----------------------------------------------------------------------------
    def __init__(self, config: "SparsityConfig", targets: list[Target]):
        frozen = [t.name for t in targets if not t.param.requires_grad]
        if self.needs_trainable_targets and frozen:
            raise ValueError(
                f"method {self.name!r} brings pruned weights back, but {len(frozen)} targets are frozen "
                f"(requires_grad=False, e.g. a LoRA base), first {frozen[0]!r}; "
                "use gmp, oneshot or constant on a frozen base"
            )
        if config.recipe_choices is None:  # built directly, not by a Sparsifier: fill the "auto" fields first
            from .recipe_defaults import apply_recipe  # here: recipe_defaults imports the registry, which imports methods

            config = apply_recipe(config)
        self.config = config
        self.args = self.parse_args(config.method_args or {})
        self.targets = targets
        self.allocation = Allocation(config.allocation, targets, config.layer_floor)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.total_steps = 0
        self.updates: Optional[UpdateSteps] = None

    def setup(self, total_steps: int) -> None:
        """Resolve fractions of the run into steps once the Trainer knows its length."""
        self.total_steps = total_steps
        start = self.config.resolve_step(self.config.start, total_steps)
        end = max(start, self.config.resolve_step(self.config.end, total_steps))
        self.updates = UpdateSteps(start, end, self.config.update_interval(start, end))

    def is_update_step(self, step: int) -> bool:
        return self.updates is not None and step in self.updates

    def target_sparsity(self, step: int) -> float:
        """The overall sparsity this method aims at after ``step`` (for logs)."""
        return self.config.sparsity

    def starting_masks(self, existing: "ExistingMasks") -> tuple[Masks, str]:
        """Masks a fresh run starts from (before ``init_masks``) and their source, for the log.

        Default: ``config.initial_masks`` (an already sparse model stays sparse); a method that
        must keep exactly what the model has (``constant``) overrides it.
        """
        return existing.resolve(self.config.initial_masks)

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        """Masks at the start of training (step 0, before any optimizer step)."""
        return masks

    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        """New masks at an update step. ``grads`` is given when ``needs_gradients`` is set."""
        raise NotImplementedError

    @property
    def observes_gradients(self) -> bool:
        """Whether ``observe_gradients`` wants the gradients of every optimizer step (e.g. a Fisher criterion)."""
        return False

    def observe_gradients(self, grads: Mapping[str, torch.Tensor]) -> None:
        """After each optimizer step that moved the weights: the gradients it used (clipped, zero where pruned)."""

    def fresh_gradients_wanted(self, step: int) -> Optional["GradientRequest"]:
        """Fresh gradients of the current masked model the method wants right before the mask update of
        ``step`` (e.g. oBERT's Fisher), or None. The engine fetches them (``hf_sparse.core.calibration``) and
        passes them to ``observe_fresh_gradients`` just before ``update_masks``."""
        return None

    def observe_fresh_gradients(self, gradients: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """The gradients asked for by ``fresh_gradients_wanted``: one ``{name: gradient}`` per batch (or example)."""

    def update_logs(self) -> dict[str, float]:
        """Numbers about the last update worth logging (e.g. how many weights regrew)."""
        return {}

    # -- state for checkpoints: tensors go to safetensors, the rest to JSON ---------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
