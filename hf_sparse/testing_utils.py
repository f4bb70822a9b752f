"""Helpers for hf_sparse's own tests and benchmarks, not for training runs (as ``transformers.testing_utils``).

``enable_cpu_fsdp`` lets FSDP2 run through the Trainer on CPU ranks (transformers 5.25, accelerate 1.16),
so the 2-rank FSDP tests and ``benchmarks/fsdp_overhead.py`` run on a machine without GPUs. With
``use_cpu=True`` accelerate's distributed type is MULTI_CPU and ``AcceleratorState`` drops a given FSDP
plugin silently (it turns it into ``DistributedType.FSDP`` only for GPU-like types). The patch does, after
the original ``__init__``, what the GPU branch does. Only the Trainer's construction needs to run with it;
launch with ``torch.distributed.run`` (gloo). It changes accelerate process-wide: never call it in a real run.
"""

from __future__ import annotations


def enable_cpu_fsdp() -> None:
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    original = AcceleratorState.__init__
    if getattr(original, "_hf_sparse_patched", False):
        return

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = plugin

    patched._hf_sparse_patched = True
    AcceleratorState.__init__ = patched
