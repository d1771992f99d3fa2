"""Remote workers over SSH (SPEC H1-H13), in three layers.

`login.py` logs in (settings, host keys, connects that leak nothing), `rpc.py` talks to the
host's agent (framing, bounded lines, a deadline per request, heartbeat, concurrent requests),
`host.py` is a host (connect, backoff, reconnect, its workers, and the `Machine` the `gpu:` policy
sees: G6), `remote.py` what runs through it (commands, GPU claims), and `push.py` sends the code
(H13); sync-back is `mlrunner/backends/sync.py` (plan, validate, apply). The agent itself is
`mlrunner/backends/agent.py`, sent with `claims.py` (the host's GPU claims).
"""

from .host import Host, SshExecutor, connect_hosts
from .login import HostError, require_paramiko, unresolvable

__all__ = ["Host", "HostError", "SshExecutor", "connect_hosts", "require_paramiko", "unresolvable"]
