"""Serving a trained model: answering question files as a stream (`stream`)."""
