"""Tests that need root (to play another user, to give a file away, to start a scheduler) skip
without it, saying why, as the GPU tests skip without CUDA: the suite passes for an ordinary
user on a shared node, and runs everything as root in CI. ``tests/test_layout.py`` holds every
test that uses such a call to this rule."""

from __future__ import annotations

import os

import pytest

# calls that only root may make on this machine (another user's uid, a scheduler's daemons)
ROOT_CALLS = ("os.chown(", "os.lchown(", "os.setuid(", "os.setgid(", "os.seteuid(", '"runuser"', "slurmcluster.start(")


def needs_root(what: str) -> None:
    """Skip the calling test unless this process is root, naming what needs it."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({what}): skipped as an ordinary user; CI runs it as root")
