"""The one error type for mistakes a user can fix.

The CLI prints an `AuditInputError` as a single paragraph without a traceback and exits with code 2;
anything else is a bug in the auditor and keeps its traceback.
"""

from __future__ import annotations


class AuditInputError(Exception):
    """Bad input: the message names the input that is wrong and says how to fix it."""
