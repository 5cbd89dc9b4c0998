"""amir-bench: speed and memory measurements of the library's functions (docs/performance.md)."""
