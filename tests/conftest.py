"""Shared test helpers."""

from __future__ import annotations

import os

import pytest


def require_root() -> None:
    """The grader sandboxes the kernel as another user, which needs root (as on Gradescope).

    Off CI a non-root run skips; with CI set a missing capability is a failure, never a skip.
    """
    if os.geteuid() != 0:
        message = "sandboxed grading needs root (the kernel runs as an unprivileged user)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
