"""The types the `gguf` package cannot write, made by a configured `llama-quantize` binary
from an f16 GGUF (llama.cpp's command line: `llama-quantize <input> <output> <TYPE>`)."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from gateway_trainers.export.errors import ExportError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
OUTPUT_TAIL = 2000
"""At most this many characters of the binary's output go into an error message."""


def run_llama_quantize(binary: str, source: Path, output: Path, qtype: str) -> None:
    """Run `binary source output QTYPE` (the type upper-cased, as llama.cpp names it) and
    check that it wrote a GGUF file. ExportError with the binary's own output when it
    cannot be started, fails, or writes nothing."""
    command = [binary, str(source), str(output), qtype.upper()]
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise ExportError(f"The llama-quantize binary `{binary}` cannot be run: {exc}") from exc
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip())[-OUTPUT_TAIL:]
        raise ExportError(
            f"llama-quantize failed (exit status {result.returncode}) making `{qtype}`: "
            f"{said or 'it printed nothing'}"
        )
    if not _is_gguf(output):
        raise ExportError(f"llama-quantize exited cleanly but wrote no GGUF file for `{qtype}`.")
    log.info("llama-quantize made %s in %.2fs", qtype, time.perf_counter() - started)


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False
