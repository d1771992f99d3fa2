"""Stopping losing experiments early, from what their logs print (SPEC A1-A2).

`settings.py` reads `early_stop:` of document 1; `watch.py` reads a running command's log
incrementally into (step, value) pairs; `rules.py` holds the decision type and what the rules
share, `median.py` and `asha.py` one rule each (pure: a series and its peers' in, a decision out);
`monitor.py` is the runner's side: it makes the rule `settings.rule` names, watches the running
commands' logs, asks the rule at each new step and ends the commands it stops.
"""
