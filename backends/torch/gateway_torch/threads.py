"""How torch's OpenMP threads wait between operations.

A decode step is hundreds of small operations, each a parallel region of torch's OpenMP
pool (GNU libgomp). By default libgomp's worker threads go to sleep almost at once after a
region (it throttles spinning when several threads have started parallel regions, as the
loading, warm-up and scheduler threads all do), so every operation pays a futex wake-up.
Letting them spin briefly (`OMP_WAIT_POLICY=ACTIVE` with a bounded `GOMP_SPINCOUNT`)
measured 5% faster decode without adapters and 20% faster with 8 LoRA adapters at
concurrency 16 on 2 cores (`benchmarks/README.md`), and an idle server still uses no CPU:
the threads sleep once the spin count runs out.

libgomp reads these variables when it is loaded, i.e. when torch is first imported, so
`tune_openmp()` runs from the plugin's `register_backends` hook, before any model loads.
Values already in the environment win.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "200000"}


def tune_openmp() -> bool:
    """Set the defaults above unless torch is already loaded; whether they can apply."""
    if "torch" in sys.modules:
        return False
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    return True
