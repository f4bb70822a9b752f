"""The names a user may choose, shared by config validation and the code that acts on them; torch-free, so
importing ``hf_sparse.config`` stays light."""

#: ``SparsityConfig.allocation``: how the overall sparsity is split over tensors (``core.allocation``).
ALLOCATIONS = ("uniform", "global", "erk")
#: ``SparsityConfig.initial_masks``: where a fresh run's masks come from (``core.starting_masks``).
INITIAL_MASKS = ("auto", "dense", "zeros", "metadata")
#: ``SparsityConfig.lr_rewinding``: the shape of each LR decay between mask updates (``training.lr_schedules``).
LR_SHAPES = ("linear", "cosine")
