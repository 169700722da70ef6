"""The gateway's shared engine: one scheduler thread per model driving a runner.

`scheduler` (continuous batching, slots and the prompt cache), `job` (a request as the
worker sees it, and how its chunks get back to the event loop), `sampling` and
`sampling_extra` (the sampler pipeline), `constraints` (grammars and JSON schemas through
llguidance), `logprobs`, `tokens` (prompts, chat templates, token pieces), `lora`
(adapters read from PEFT files, the resident pool, the batched multi-adapter plan),
`runner` (the `Runner` protocol: the only per-engine part), `model` (what the engine needs
of a loaded model) and `backend` (`EngineBackend`: all of it as a gateway backend). The
torch and onnx backends plug their runners in; this package registers no plugin itself.
"""
