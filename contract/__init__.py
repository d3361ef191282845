"""The contract between exporter, runtime, bench engine and apps: the memory-pack format, the bundle
manifest and its schema, the run-stats schema, atomic writes and hashing. numpy/xxhash only."""
