"""Sparsity engine: targets (and the names peft gives them), masks and patterns, allocation, the mask engine, optimizer state, distributed helpers."""
