"""Built-in pruning methods; importing this package registers them."""

from .base import PruningMethod
from .constant import Constant
from .gmp import GMP, OneShot

__all__ = ["Constant", "GMP", "OneShot", "PruningMethod"]
