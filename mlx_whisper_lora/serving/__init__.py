"""Serving: an OpenAI-compatible HTTP server over one base model with many adapters (serve.py)."""
