"""Built-in pruning methods; importing this package registers them."""

from .acdc import ACDC
from .base import PruningMethod
from .constant import Constant
from .cyclic import Cyclic
from .drop_and_grow import DSTEE, SET, DropAndGrow, RigL
from .east import EAST
from .gmp import GMP, OneShot

__all__ = [
    "ACDC", "Constant", "Cyclic", "DSTEE", "DropAndGrow", "EAST", "GMP", "OneShot", "PruningMethod", "RigL", "SET",
]
