"""Trainer integration. ``SparseTrainer`` (trainer.py) only wires the parts, each in its own module:
the engine it builds (engine.py) and its per-step callback (callback.py); the run's length and LR
rewinding (run_schedule.py, lr_schedules.py) and what they changed (run_changes.py); a dense teacher
(teacher.py, distill.py, teacher_cache.py); checkpoints (checkpoint.py, resume.py, fsdp.py); the card and
Hub upload (card_hub.py); diagnostics; script flags (arguments.py) and the two-stage flow (two_stage.py).
``presets.py`` is an alias of ``hf_sparse.presets``."""
