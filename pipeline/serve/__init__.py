"""The serve stage: the FastAPI app, its metrics and request limits, and the service process."""
