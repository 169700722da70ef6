"""LoRA in the torch backend: merges of adapters (peft), and synthetic adapters for tests
and benchmarks; reading, pooling and batching adapters are the engine's
(`gateway_engine.lora`)."""
