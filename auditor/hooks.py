"""The one way the auditor touches a model: forward hooks that are always removed.

Handles are collected as they are registered, inside the `try`, so a failure halfway through
registration, or during the forward pass, still leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

ForwardHook = Callable[[nn.Module, Any, Any], Any]


class StopForward(Exception):
    """Raised by a hook once a forward pass has given everything its caller needs: the blocks after it, the final
    norm and the language-model head do not run. The caller catches it around the forward call."""


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """Register `(module, hook)` pairs for the duration of the block.

    Example:
        >>> with forward_hooks([(layer, record)]):
        ...     model(**batch)
    """
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_output(output: Any) -> Any:
    """The hidden states a decoder block returns (some architectures return a tuple)."""
    return output[0] if isinstance(output, tuple) else output
