"""The training engine: one loop and its parts (schedule, batches, encoder-state cache, data-parallel world),
the run configuration and the back-end interface, shared by both back ends. Scoring (`--test`, validation
WER, forgetting and no-speech checks) is in `scoring/`, the recipes a run is assembled from in `recipes/`, and
long recordings become training windows in `preparing/`."""
