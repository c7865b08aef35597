"""drift-auditor: did a fine-tune make a chat model less safe, and how much of that is a persona shift?"""

from __future__ import annotations

from auditor.errors import AuditInputError

__version__ = "0.1.0"
__all__ = ["AuditInputError", "__version__"]
