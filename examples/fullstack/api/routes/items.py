"""Items of the current user: the metered part of the API (see ``main.create_app``)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlmodel import col, func, select

from credit_middleware import priced  # credits

from ... import crud
from ...models import Item, ItemCreate, ItemPublic, ItemsPublic, ItemUpdate, Message
from ..deps import CurrentUser, SessionDep

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/", response_model=ItemsPublic)
def read_items(
    session: SessionDep, current_user: CurrentUser, skip: int = 0, limit: int = 100
) -> Any:
    mine = col(Item.owner_id) == current_user.id
    count = session.exec(select(func.count()).select_from(Item).where(mine)).one()
    items = session.exec(select(Item).where(mine).offset(skip).limit(limit)).all()
    return ItemsPublic(data=[ItemPublic.model_validate(i) for i in items], count=count)


def _own(session: SessionDep, current_user: CurrentUser, item_id: uuid.UUID) -> Item:
    item = session.get(Item, item_id)
    if item is None or item.owner_id != current_user.id:
        raise HTTPException(status_code=404, detail="Item not found")
    return item


@router.get("/{item_id}", response_model=ItemPublic)
def read_item(session: SessionDep, current_user: CurrentUser, item_id: uuid.UUID) -> Any:
    return _own(session, current_user, item_id)


@router.post("/", response_model=ItemPublic)
@priced("0.01")  # credits
def create_item(session: SessionDep, current_user: CurrentUser, item_in: ItemCreate) -> Any:
    return crud.create_item(session, item_in, current_user.id)


@router.put("/{item_id}", response_model=ItemPublic)
def update_item(
    session: SessionDep, current_user: CurrentUser, item_id: uuid.UUID, item_in: ItemUpdate
) -> Any:
    item = _own(session, current_user, item_id)
    item.sqlmodel_update(item_in.model_dump(exclude_unset=True))
    session.add(item)
    session.commit()
    session.refresh(item)
    return item


@router.delete("/{item_id}")
def delete_item(session: SessionDep, current_user: CurrentUser, item_id: uuid.UUID) -> Message:
    session.delete(_own(session, current_user, item_id))
    session.commit()
    return Message(message="Item deleted successfully")
