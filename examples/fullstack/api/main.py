"""The API router: every route group, included under the app's ``/api/v1`` prefix."""

from __future__ import annotations

from fastapi import APIRouter

from .routes import items, login, users, utils

api_router = APIRouter()
api_router.include_router(login.router)
api_router.include_router(users.router)
api_router.include_router(utils.router)
api_router.include_router(items.router)
