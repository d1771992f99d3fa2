"""The Slurm backend (SPEC S1-S6): the driver submits job arrays, each element runs one task.

`settings.py` checks `slurm:`; `queue.py` asks Slurm (parsers are pure); `submission.py` holds a
submission's files; `submit.py` submits; `element.py` runs one task on its node; `watch.py` is
`--wait` and the Slurm part of `--status`, `--stop` and `--follow`.
"""
