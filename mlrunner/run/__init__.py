"""Running a plan: the runner's checks and summary (`runner.py`), workers taking tasks in order
(`scheduler.py`, `pool.py`, `workers.py`), where each command runs (`allocator.py`, `gpu_policy.py`,
`gpu_fit.py`, `gpus.py`, `slots.py`), signals and stopping (`signals.py`, `stop.py`, `detach.py`,
`early_stop/`), and the records every view reads back (`state.py`, `records.py`, `index.py`,
`runs.py`, `processes.py`, `provenance.py`, `snapshot.py`).
"""
