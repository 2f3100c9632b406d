"""Scoring a model: `--test` (base beside adapted), validation WER, long-form tests, the forgetting and
no-speech checks, and the cached scores and kept runs."""
