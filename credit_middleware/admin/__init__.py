"""The admin API, pages and usage dashboard: a mountable Starlette app behind a required guard.

::

    from credit_middleware.admin import admin_app

    app.mount("/admin", admin_app(ledger, token=admin_token, refusals=observer))

Scripts send ``Authorization: Bearer <token>``; people sign in at ``/admin/login``. The billing
middleware must exempt ``/admin`` and ``/admin/*`` (``AdminGuard.billing_exempt`` marks it).
"""

from __future__ import annotations

from ._guard import AdminGuard, Authorize, Operator, bearer_token_guard, operator_of
from ._login import Login, credentials_login, token_login
from ._session import Sessions
from .app import RefusalSource, admin_app
from .dashboard import render_dashboard

__all__ = [
    "AdminGuard",
    "Authorize",
    "Login",
    "Operator",
    "RefusalSource",
    "Sessions",
    "admin_app",
    "bearer_token_guard",
    "credentials_login",
    "operator_of",
    "render_dashboard",
    "token_login",
]
