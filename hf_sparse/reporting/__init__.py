"""Reports: per-layer sparsity report and the measured size/speed report with its rendering."""
