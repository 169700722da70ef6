"""What every trainer of the package shares: the resident base model, LoRA attach/detach
and saving, chat encoding with loss masks, and the optimizer loop.

No module here imports torch at import time; each imports it inside the functions that
run in the training worker.
"""
