"""Many adapters on one loaded base model, chosen per batch row: the bank (serving and the `transcribe`
CLI's side-by-side view both use it), the per-layer update terms, and one bank layer per framework."""
