"""The FastAPI service the partner portal and reviewers call."""
