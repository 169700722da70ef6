"""The error of an export step that cannot complete (its job fails with the message)."""

from __future__ import annotations


class ExportError(Exception):
    """A merged model cannot be written as asked: what differs, or what a tool said."""
