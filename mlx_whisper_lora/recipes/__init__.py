"""What a training run is assembled from: the run itself, the forgetting guard's self-replay and its defaults,
and the word-timing heads chosen after training."""
