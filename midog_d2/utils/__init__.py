"""Helpers that serve several parts of the project: pictures of detections."""
