"""LoRA adapters in the torch engine: reading PEFT files, the resident pool, the batched
multi-adapter delta, and merges."""
