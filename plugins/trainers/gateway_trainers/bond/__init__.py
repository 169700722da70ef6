"""BOND / J-BOND: distil a teacher's best-of-N samples into a LoRA on the student.

`check` is what a job is given (checked at submission), `loss` the objective as pure tensor
functions, `policy` sampling, log-probabilities and the EMA anchor on the model, `trainer`
the `bond` trainer. Importing this package imports no torch (the trainer loads it inside
`run`).
"""
