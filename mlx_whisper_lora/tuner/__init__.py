"""The training engine: one loop, one run configuration, and the steps of a run, shared by both back ends."""
