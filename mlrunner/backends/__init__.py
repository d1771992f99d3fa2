"""Where commands run. `base` holds the interface and the one process loop; `local` runs here;
`ssh/` (with `agent.py`, `claims.py` and `sync.py`) runs on remote hosts; `slurm/` submits job arrays.
"""
