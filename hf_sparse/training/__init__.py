"""Trainer integration: SparseTrainer, the callback, LR schedules, distillation, presets, diagnostics."""
