"""The benchmark suite (``python -m benchmarks``); see benchmarks/README.md."""

# The suite's sections, in the order they run; here (no imports) so the CLI can offer them
# without importing torch.
SECTIONS = ("fid", "train_step", "sampling", "data", "memory", "e2e", "cache")
