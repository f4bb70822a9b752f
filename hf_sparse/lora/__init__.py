"""PEFT/LoRA: masks of a sparse base under peft, the masked-delta sparsifier, merge and unload (peft's name layout is core.peft_layout)."""
