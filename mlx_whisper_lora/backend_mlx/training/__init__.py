"""The MLX engine's training step: its compiled form and the kernels it runs where MLX's own are slow or
keep too much (the frozen-projection loss, the CPU softmax, blockwise attention)."""
