"""PEFT/LoRA: peft model layout, masks of peft models, the masked-delta sparsifier, merge and unload."""
