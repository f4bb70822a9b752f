"""Built-in pruning methods; importing this package registers them."""

from .acdc import ACDC
from .base import PruningMethod
from .gmp import GMP, OneShot

__all__ = ["ACDC", "GMP", "OneShot", "PruningMethod"]
