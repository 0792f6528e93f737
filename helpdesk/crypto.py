"""Encryption at rest for secrets stored in the database (provider tokens).

MultiFernet over settings.FERNET_KEYS: the first key encrypts, every key decrypts, so a
key can be rotated by putting a new key first and re-encrypting (``rotate``). Values are
JSON documents; a value that cannot be decrypted with any key raises
``cryptography.fernet.InvalidToken`` rather than returning garbage.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise RuntimeError("FERNET_KEYS is empty")
    return MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FERNET_KEYS))


def encrypt_json(value) -> str:
    return fernet().encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()


def decrypt_json(token: str):
    return json.loads(fernet().decrypt(token.encode()))


def rotate(token: str) -> str:
    """Re-encrypt ``token`` under the first key (MultiFernet.rotate)."""
    return fernet().rotate(token.encode()).decode()


class EncryptedJSONField(models.TextField):
    """A JSON value stored Fernet-encrypted in a text column. Not queryable by content."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return None
        return decrypt_json(value)

    def to_python(self, value):
        if value is None or not isinstance(value, str):
            return value
        try:
            return decrypt_json(value)
        except InvalidToken:  # a plain JSON string, e.g. typed into a form
            return json.loads(value)

    def get_prep_value(self, value):
        if value is None:
            return None
        return encrypt_json(value)
