"""Sandboxed grading of otter notebooks.

The student's kernel runs unprivileged; scores are computed outside it (see README.md).
"""
