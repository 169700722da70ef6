"""LoRA adapters in the engine: reading PEFT files, the resident pool, and the batched
multi-adapter plan a runner applies (merges are the torch backend's, `gateway_torch.lora`)."""
