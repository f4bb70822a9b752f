"""Sparsity engine: targets, masks, allocation, the Sparsifier, optimizer state, distributed helpers."""
