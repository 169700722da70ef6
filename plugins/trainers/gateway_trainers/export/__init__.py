"""The export step of distillation jobs: merge a LoRA adapter into its base model, and write
the result as a Hugging Face safetensors folder and as GGUF files of chosen types.

- `types`: `writable_types(llama_quantize)`, `check_types(types, llama_quantize)` (the
  submission check: InvalidRequest on `quantization_types`).
- `base`: `gguf_template(spec)` (cheap, for submission) and `export_base(spec, data_dir)`
  (the worker's: the base folder and the GGUF it came from).
- `merge`: `merge(base_dir, adapter_dir, output)`.
- `gguf_writer`: `write_gguf(merged_dir, output, qtype, template=..., llama_quantize=...)`,
  `can_write_gguf(template)` / `check_gguf(template)`.

Importing this package imports neither torch nor transformers nor numpy: each function
imports what it needs when it runs (the server imports the package to check
submissions; the worker runs the export).
"""

from gateway_trainers.export.base import ExportBase, export_base, gguf_template
from gateway_trainers.export.errors import ExportError
from gateway_trainers.export.gguf_writer import (
    can_write_gguf,
    check_gguf,
    gguf_unsupported_reason,
    write_gguf,
)
from gateway_trainers.export.merge import merge
from gateway_trainers.export.types import check_types, writable_types

__all__ = [
    "ExportBase",
    "ExportError",
    "can_write_gguf",
    "check_gguf",
    "check_types",
    "export_base",
    "gguf_template",
    "gguf_unsupported_reason",
    "merge",
    "writable_types",
    "write_gguf",
]
