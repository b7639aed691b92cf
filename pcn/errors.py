"""Errors that are the user's to fix (a bad config, a missing or damaged file, a full disk).

``pcn`` prints them as one line and exits 2 (usage) or 1 (failure) without a traceback;
``pcn --debug`` (or PCN_DEBUG=1) shows the traceback.  Every other exception is a bug in
pcn and keeps its traceback.
"""
from __future__ import annotations


class PcnError(Exception):
    """An expected failure: the message names the file or key and what is wrong (exit 1)."""

    exit_code = 1


class UsageError(PcnError):
    """The command line or a config asks for something impossible (exit 2)."""

    exit_code = 2
