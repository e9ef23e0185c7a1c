"""The admin API and usage dashboard: a mountable Starlette app behind a required guard.

::

    from credit_middleware.admin import admin_app, bearer_token_guard

    app.mount("/admin", admin_app(ledger, authorize=bearer_token_guard(token), refusals=observer))
"""

from __future__ import annotations

from ._guard import AdminGuard, Authorize, bearer_token_guard
from .app import RefusalSource, admin_app
from .dashboard import render_dashboard

__all__ = [
    "AdminGuard",
    "Authorize",
    "RefusalSource",
    "admin_app",
    "bearer_token_guard",
    "render_dashboard",
]
