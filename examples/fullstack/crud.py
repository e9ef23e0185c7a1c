"""The app's database operations."""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from .core.security import get_password_hash, verify_password
from .models import Item, ItemCreate, User, UserRegister


def create_user(session: Session, user_in: UserRegister) -> User:
    user = User.model_validate(
        user_in, update={"hashed_password": get_password_hash(user_in.password)}
    )
    session.add(user)
    session.commit()
    session.refresh(user)
    return user


def get_user_by_email(session: Session, email: str) -> User | None:
    found: User | None = session.exec(select(User).where(User.email == email)).first()
    return found


def authenticate(session: Session, email: str, password: str) -> User | None:
    user = get_user_by_email(session, email)
    if user is None or not verify_password(password, user.hashed_password):
        return None
    return user


def create_item(session: Session, item_in: ItemCreate, owner_id: uuid.UUID) -> Item:
    item = Item.model_validate(item_in, update={"owner_id": owner_id})
    session.add(item)
    session.commit()
    session.refresh(item)
    return item
