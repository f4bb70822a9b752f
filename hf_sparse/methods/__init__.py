"""Built-in pruning methods; importing this package registers them."""

from .base import PruningMethod
from .gmp import GMP, OneShot

__all__ = ["GMP", "OneShot", "PruningMethod"]
