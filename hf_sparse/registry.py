"""The method registry's public home (``hf_sparse.registry.get_method_class`` and friends); it lives in
``hf_sparse.methods.registry``, beside the methods it registers."""

from .methods.registry import available_methods, get_method_class, register_method

__all__ = ["available_methods", "get_method_class", "register_method"]
