"""The cluster's users, kept by the master in its state store (kind ``users``).

A user is a uid, a description and an argon2id hash of the password (argon2-cffi's
``PasswordHasher``: memory-hard, salted, parameters carried in the hash); the password itself is
never stored. Admin Router's login (``adminrouter.acs``) asks ``verify``; ``navstar user …``
drives ``add``/``remove``/``list`` through the IAM API.

``verify`` costs one hash for a known uid and one for an unknown one (a fixed dummy hash), so
the answer's timing does not tell which uids exist. Hashing takes tens of milliseconds: callers
on an event loop run it in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from control.state import StateStore

UID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,63}$")
MIN_PASSWORD = 1


class UserExists(Exception):
    """``add`` of a uid that is already there; nothing changed."""


class UnknownUser(KeyError):
    """No such uid."""


@dataclass(frozen=True)
class User:
    uid: str
    description: str


def check_uid(uid: str) -> str | None:
    """None when ``uid`` is usable, else what is wrong with it."""
    if not UID.match(uid):
        return "uid: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
    return None


class Users:
    """Users in ``store``. Every method is synchronous; ``add`` and ``verify`` hash (slow)."""

    def __init__(self, store: StateStore, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash("navstar: no such user")

    def add(self, uid: str, password: str, description: str = "") -> User:
        """Creates a user. Raises ``ValueError`` naming the field, ``UserExists``."""
        problem = check_uid(uid)
        if problem:
            raise ValueError(problem)
        if len(password) < MIN_PASSWORD:
            raise ValueError("password: must not be empty")
        if self.store.get("users", uid) is not None:
            raise UserExists(uid)
        self.store.put("users", uid, {"uid": uid, "description": description, "hash": self.hasher.hash(password)})
        return User(uid, description)

    def set_password(self, uid: str, password: str) -> None:
        """Raises ``UnknownUser``, ``ValueError`` for an empty password."""
        record = self.store.get("users", uid)
        if record is None:
            raise UnknownUser(uid)
        if len(password) < MIN_PASSWORD:
            raise ValueError("password: must not be empty")
        self.store.put("users", uid, {**record, "hash": self.hasher.hash(password)})

    def remove(self, uid: str) -> bool:
        """Idempotent; True when the user was there."""
        if self.store.get("users", uid) is None:
            return False
        self.store.delete("users", uid)
        return True

    def get(self, uid: str) -> User | None:
        record = self.store.get("users", uid)
        return None if record is None else User(record["uid"], record.get("description", ""))

    def exists(self, uid: str) -> bool:
        return self.store.get("users", uid) is not None

    def list(self) -> list[User]:
        return [User(r["uid"], r.get("description", "")) for _uid, r in self.store.items("users")]

    def verify(self, uid: str, password: str) -> bool:
        """True when ``uid`` exists and ``password`` is its password; rehashes an old-parameter hash."""
        record = self.store.get("users", uid)
        stored = record["hash"] if record is not None else self._dummy
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if record is None:
            return False
        if self.hasher.check_needs_rehash(stored):
            self.store.put("users", uid, {**record, "hash": self.hasher.hash(password)})
        return True
