"""Sparsity engine: targets (and the names peft gives them), masks and patterns, allocation, the Sparsifier, optimizer state, distributed helpers."""
