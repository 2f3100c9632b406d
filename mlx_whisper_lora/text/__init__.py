"""Text: tokenizer, normalizers, languages, case style, WER/CER. Framework-free (no MLX, no torch)."""
