"""Access control: roles, API tokens, dashboard sessions, and the one policy table.

How it fits: `AccessControl` (middleware.py) applies `POLICY` (policy.py) to every request and
puts the `Principal` (principal.py) in `request.state.principal`, where handlers find it with
`current_principal` (dependencies.py); handlers that change or export something pass it to
`app.audit.record_audit`.
"""

from __future__ import annotations

from app.auth.principal import Principal, Role

__all__ = ["Principal", "Role"]
