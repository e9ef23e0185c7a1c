"""Settings from the environment, read once at the edge (``Settings.from_env``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("examples.fullstack")

DEV_SECRET = "dev-only-secret-key-change-me-0123456789abcdef"  # noqa: S105 - the dev default


@dataclass(frozen=True)
class Settings:
    """``database_url`` is a SQLAlchemy URL (``postgresql+psycopg://...`` or ``sqlite:///...``);
    ``secret_key`` signs the app's JWTs (32 bytes or more)."""

    database_url: str = "sqlite:///./app.db"
    secret_key: str = DEV_SECRET
    project_name: str = "Full Stack FastAPI Project"
    api_v1_str: str = "/api/v1"
    access_token_expire_minutes: int = 60 * 24 * 8
    cors_origins: tuple[str, ...] = ("http://localhost:5173",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        origins = env.get("BACKEND_CORS_ORIGINS")
        settings = cls(
            database_url=env.get("DATABASE_URL", cls.database_url),
            secret_key=env.get("SECRET_KEY", cls.secret_key),
            cors_origins=(
                tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip())
                if origins is not None
                else cls.cors_origins
            ),
        )
        if settings.secret_key == DEV_SECRET:
            log.warning("SECRET_KEY is not set: using a development secret, never in production")
        return settings

    @property
    def ledger_url(self) -> str | None:
        """The credit ledger's URL: the app's own PostgreSQL database (the ledger keeps to a
        schema of its own there); None on SQLite, where it keeps a file of its own."""
        scheme, sep, rest = self.database_url.partition("://")
        if sep and scheme.split("+", 1)[0] in ("postgresql", "postgres"):
            return f"postgresql://{rest}"
        return None
