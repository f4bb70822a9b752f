"""What SparseTrainer refuses under sharding, with errors that say why (no launch needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_sparse.methods.gmp import GMP
from hf_sparse.registry import get_method_class
from hf_sparse.training import fsdp


def _trainer(fsdp_enabled=False, fsdp2=False, zero_stage=None):
    state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))
    return SimpleNamespace(
        is_fsdp_enabled=fsdp_enabled,
        is_deepspeed_enabled=zero_stage is not None,
        accelerator=SimpleNamespace(is_fsdp2=fsdp2, state=state),
    )


def test_fsdp2_runs_every_method_but_east():
    fsdp.refuse_unsupported(_trainer(True, True), GMP, sparse_base=False)
    for name in ("gmp", "oneshot", "acdc", "set", "rigl", "dst_ee", "cyclic", "constant"):
        fsdp.refuse_unsupported(_trainer(True, True), get_method_class(name), sparse_base=False)
    with pytest.raises(ValueError, match="east.*share conv weights"):
        fsdp.refuse_unsupported(_trainer(True, True), get_method_class("east"), sparse_base=False)


def test_fsdp1_zero3_and_sparse_lora_base_are_refused():
    with pytest.raises(ValueError, match="FSDP2 only"):
        fsdp.refuse_unsupported(_trainer(True, False), GMP, sparse_base=False)
    with pytest.raises(ValueError, match="ZeRO-3"):
        fsdp.refuse_unsupported(_trainer(zero_stage=3), GMP, sparse_base=False)
    fsdp.refuse_unsupported(_trainer(zero_stage=2), GMP, sparse_base=False)  # whole parameters: like DDP
    with pytest.raises(ValueError, match="LoRA base"):
        fsdp.refuse_unsupported(_trainer(True, True), None, sparse_base=True)
    fsdp.refuse_unsupported(_trainer(), None, sparse_base=True)  # no sharding: nothing to refuse
