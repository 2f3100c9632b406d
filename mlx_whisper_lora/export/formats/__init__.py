"""One file a format, each with its `FORMAT` record (export/registry.py lists this folder)."""
