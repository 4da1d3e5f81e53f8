"""The train stage's steps: data checks and evaluation, the grid search, champion/challenger,
drift and the model report."""
