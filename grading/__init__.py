"""Sandboxed grading of otter notebooks: the student's kernel runs unprivileged, scores are computed outside it."""
