"""Training and test data: audio, manifests, labels, batches, example sets."""
