"""Kernels of gain-curate, installed as `gain_curate.kernels` (never as top-level `kernels`)."""
