"""Built-in pruning methods; importing this package registers them."""

from .base import PruningMethod
from .cyclic import Cyclic
from .east import EAST
from .gmp import GMP, OneShot

__all__ = ["EAST", "Cyclic", "GMP", "OneShot", "PruningMethod"]
