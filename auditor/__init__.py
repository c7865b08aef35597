"""drift-auditor: did a fine-tune make a chat model less safe, and how much of that is a persona shift?

`auditor.audit(base, finetune, ...)` runs the whole audit and returns typed results (see `auditor/api.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.errors import AuditInputError

if TYPE_CHECKING:
    from auditor.api import audit
    from auditor.callback import DriftAuditCallback

__version__ = "0.1.0"
__all__ = ["AuditInputError", "DriftAuditCallback", "__version__", "audit"]


def __getattr__(name: str) -> Any:
    """`auditor.audit` and `auditor.DriftAuditCallback` without importing torch and transformers for every
    `drift-audit --help`."""
    if name == "audit":
        from auditor.api import audit

        return audit
    if name == "DriftAuditCallback":
        from auditor.callback import DriftAuditCallback

        return DriftAuditCallback
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
