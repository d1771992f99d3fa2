"""Views of the records: `--dry-run` (`report.py`), `--status` (`status.py`), `--follow`
(`follow.py`) and `--report` (`history.py`, `timeline.py`, `charts.py`, `html_report.py`).
`--examine` and the `Examiner` API are `mlrunner/examine/`.
"""
