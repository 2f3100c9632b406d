"""Decoding and long-form transcription (drives either back end's model)."""
