"""Mesos roles as the master uses them: what a valid role is, and the public agents' role.

An agent registered with a role (``navstar agent --default-role``, Mesos' ``--default_role``)
offers all its resources reserved for that role; DC/OS's public agents use ``slave_public``.
Which frameworks may take reserved resources is ``control.drf.may_use``; which apps may is
the app's ``acceptedResourceRoles`` (``control.placement.role_refusal``).
"""

from __future__ import annotations

import re

UNRESERVED = "*"
PUBLIC_ROLE = "slave_public"


def role_problem(role: str) -> str | None:
    """Why ``role`` is not a valid Mesos role (``"a"`` or hierarchical ``"a/b"``; ``"*"`` is), or None.
    Mesos' rules: no empty, ``.`` or ``..`` element, no whitespace, ``\\`` or ``*`` inside an
    element, no element starting with ``-``."""
    if role == UNRESERVED:
        return None
    elements = role.split("/")
    if any(e in ("", ".", "..") or e.startswith("-") or re.search(r"[\s\\*]", e) for e in elements):
        return f"role {role!r} is not a valid Mesos role (e.g. 'dev' or 'eng/web')"
    return None
