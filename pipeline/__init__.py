"""time-to-dispatch: train, validate, version and serve dispatch-time estimates."""
