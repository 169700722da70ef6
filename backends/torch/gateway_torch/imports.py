"""Importing transformers from the loading threads, one thread at a time.

transformers resolves its public names lazily; two models loading in parallel threads can
race in that machinery and fail with "cannot import name ...". Every load imports through
`transformers_module()`, which holds a lock for the first import.
"""

from __future__ import annotations

import threading
from types import ModuleType

_LOCK = threading.Lock()


def transformers_module() -> ModuleType:
    """The `transformers` package with its auto classes resolved (thread-safe)."""
    with _LOCK:
        import transformers

        # Touch the lazily resolved names while holding the lock.
        _ = (transformers.AutoModel, transformers.AutoModelForCausalLM)
        _ = (transformers.AutoTokenizer, transformers.DynamicCache)
        return transformers
