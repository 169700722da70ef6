"""GRPO on scored completions: Kiln's `POST /v1/train/grpo` as a trainer.

`loss` is the objective as pure tensor functions; `trainer` is the `grpo` trainer. Importing
this package imports no torch (the trainer module loads it inside `run`).
"""
