"""`distillation`: OpenTracy's pipeline, run as one job in the student's training worker.

Phases: `data_generation` (N teacher samples per prompt, and a reference answer for each
held-out prompt), `curation` (a judge or a reward plugin scores every sample; the best per
prompt is kept, prompts below `min_score` are dropped), `training` (the `bond` trainer),
`export` (the merged model as safetensors, GGUF files), then the before/after table on
the held-out prompts. Every file is written under `<data>/distillation/<job id>/` as it is
made, so a cancelled or failed job keeps what it made.
"""
