"""The gateway's trainers: `sft`, `grpo` and `finetune`, registered as a plugin.

Importing this package imports no torch: the trainers load it when a job runs, in the
training worker process.
"""
