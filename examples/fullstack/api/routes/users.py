"""Users: signup (which provisions the trial) and the current user."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from credit_middleware import provision_credits  # credits

from ... import crud
from ...models import UserPublic, UserRegister
from ..deps import CurrentUser, SessionDep

router = APIRouter(prefix="/users", tags=["users"])


@router.post("/signup", response_model=UserPublic)
@provision_credits(lambda request: request.app.state.credits)  # credits
def register_user(session: SessionDep, user_in: UserRegister) -> Any:
    if crud.get_user_by_email(session, user_in.email) is not None:
        raise HTTPException(status_code=400, detail="A user with this email already exists")
    return crud.create_user(session, user_in)


@router.get("/me", response_model=UserPublic)
def read_user_me(current_user: CurrentUser) -> Any:
    return current_user
