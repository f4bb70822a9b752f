"""Built-in pruning methods; importing this package registers them."""

from .acdc import ACDC
from .base import PruningMethod
from .constant import Constant
from .drop_and_grow import DSTEE, SET, DropAndGrow, RigL
from .gmp import GMP, OneShot

__all__ = ["ACDC", "Constant", "DSTEE", "DropAndGrow", "GMP", "OneShot", "PruningMethod", "RigL", "SET"]
