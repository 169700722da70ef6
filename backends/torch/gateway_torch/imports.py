"""Importing transformers and building models from the loading threads, one at a time.

transformers resolves its public names lazily; two models loading in parallel threads can
race in that machinery and fail with "cannot import name ...". Worse, `from_pretrained`
builds a model under a context that patches torch globally (parameters created on the
`meta` device), so a second model built meanwhile in another thread gets meta tensors.
Every load imports through `transformers_module()` and builds inside `LOADING`.
"""

from __future__ import annotations

import threading
from types import ModuleType

_LOCK = threading.Lock()
LOADING = threading.Lock()
"""Held while a thread builds a model with `from_pretrained` (see above)."""


def transformers_module() -> ModuleType:
    """The `transformers` package with its auto classes resolved (thread-safe)."""
    with _LOCK:
        import transformers

        # Touch the lazily resolved names while holding the lock.
        _ = (transformers.AutoModel, transformers.AutoModelForCausalLM)
        _ = (transformers.AutoTokenizer, transformers.DynamicCache)
        return transformers
