"""Running Demucs: the CLI or the warm child, bags pruned to a job's stems, and the weights
Demucs may load."""
