"""Planning a sweep, with no side effects: `params.yaml` read and checked (`yamldocs.py`,
`config.py`, `hosts.py`), expanded into ordered tasks (`sweep.py`) and shell lines
(`template.py`), and each task reviewed against its records (`resume.py`, `keep.py`, `origin.py`).
"""
