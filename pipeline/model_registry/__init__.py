"""The model registry: which models exist, which one is live, and rejecting and restoring them."""
