"""Developer tools: benchmarks and probes (not part of the castore package)."""
