"""Benchmarks: scripts that measure the stages; their figures are kept in `benchmarks/results/`."""
import os
import secrets

from pipeline.settings import ENVIRONMENT


def use_throwaway_signing_key() -> None:
    """Give the stages this benchmark starts a random model signing key, unless one is set: they
    refuse to persist or load an unsigned model (docs/reliability.md)."""
    os.environ.setdefault(ENVIRONMENT.signing_key, f"benchmark:{secrets.token_hex(32)}")
