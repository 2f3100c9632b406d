"""The MLX back end: model, LoRA layers, loading, training step."""
