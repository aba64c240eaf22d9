"""gain-curate: rank RL prompts by GAIN-RL angle concentration (arXiv 2506.02281)."""

__version__ = "0.1.0"
