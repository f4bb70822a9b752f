"""Checkpoint files: atomic writes, native and compressed-tensors layouts, save, load, resume state, Hub, model card."""
