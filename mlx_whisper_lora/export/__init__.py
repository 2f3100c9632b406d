"""Writing a fine-tuned model for other runtimes: transformers folders, CTranslate2, GGML (and its
quantizations), and the model card that says how to load each."""
