"""Batch scoring: scoring a file of orders, and the backfill of past weeks."""
