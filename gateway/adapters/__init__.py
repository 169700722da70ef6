"""LoRA adapters on the host side: the per-model store (PEFT directories written
atomically), name rules, archive import/export, and which adapters served a response.

Backends that serve adapters (`Capability.ADAPTERS`) read their weights from the same store;
the `adapters` route family (Kiln's `/v1/adapters/*`) and llama-server's `/lora-adapters`
manage it.
"""
