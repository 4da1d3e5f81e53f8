"""The whole pipeline on one machine: the local run's bootstrap and child processes, the local
S3 server and synthetic data."""
