"""Password hashes and the app's own access tokens (HS256 JWTs whose ``sub`` is the user id)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
from pwdlib import PasswordHash

ALGORITHM = "HS256"
password_hash = PasswordHash.recommended()


def create_access_token(subject: str | Any, expires_delta: timedelta, secret: str) -> str:
    expire = datetime.now(timezone.utc) + expires_delta
    return jwt.encode({"exp": expire, "sub": str(subject)}, secret, algorithm=ALGORITHM)


def verify_password(plain: str, hashed: str) -> bool:
    return password_hash.verify(plain, hashed)


def get_password_hash(password: str) -> str:
    return password_hash.hash(password)
