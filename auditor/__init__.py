"""drift-auditor: did a fine-tune make a chat model less safe, and how much of that is a persona shift?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.errors import AuditInputError

if TYPE_CHECKING:
    from auditor.callback import DriftAuditCallback

__version__ = "0.1.0"
__all__ = ["AuditInputError", "DriftAuditCallback", "__version__"]


def __getattr__(name: str) -> Any:
    """`auditor.DriftAuditCallback` without importing transformers for every `drift-audit --help`."""
    if name == "DriftAuditCallback":
        from auditor.callback import DriftAuditCallback

        return DriftAuditCallback
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
