"""Item routes: an item's images, for pages that show what a job worked on."""

from __future__ import annotations

import mimetypes
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from PIL import Image
from sqlalchemy.orm import Session

from services.gateway.deps import ContextDep, SessionDep, TeamDep
from services.gateway.paging import INT32_MAX, NOT_FOUND
from shared.db.models import Dataset, Item, Team
from shared.errors import ItemNotFound, NotFound, StorageError, UnsafePath

router = APIRouter(prefix="/v1/items", tags=["items"])
# An item's images never change (a new file is a new item): browsers may keep them.
CACHE = "private, max-age=3600"


def image_urls(item_id: uuid.UUID | None, count: int) -> list[str]:
    """The API URLs of an item's images, relative to the API root."""
    if item_id is None:
        return []
    return [f"/v1/items/{item_id}/images/{n}" for n in range(count)]


def _owned_item(session: Session, team: Team, item_id: uuid.UUID) -> Item:
    item = session.get(Item, item_id)
    dataset = session.get(Dataset, item.dataset_id) if item is not None else None
    if item is None or dataset is None or dataset.team_id != team.id:
        raise ItemNotFound(item_id)
    return item


def _media_type(path: Path) -> str:
    """An image's content type: from its suffix, else from what Pillow reads in its header."""
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed and guessed.startswith("image/"):
        return guessed
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except OSError:  # not an image Pillow reads (UnidentifiedImageError is an OSError)
        return "application/octet-stream"


@router.get(
    "/{item_id}/images/{n}",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "image/*": {}},
            "description": "The image's bytes as stored",
        },
    },
)
def get_image(
    item_id: uuid.UUID,
    n: Annotated[int, PathParam(ge=0, le=INT32_MAX, description="The image's place (0-based).")],
    session: SessionDep,
    team: TeamDep,
    context: ContextDep,
) -> FileResponse:
    """Image ``n`` of an item of one of the team's datasets."""
    item = _owned_item(session, team, item_id)
    if n >= len(item.images):
        message = f"item {item_id} has {len(item.images)} image(s); there is no image {n}"
        raise NotFound(message, item_id=str(item_id))
    gone = NotFound(f"image {n} of item {item_id} is not stored", item_id=str(item_id))
    try:
        path = context.store.local_path(str(item.images[n]))
    except (StorageError, UnsafePath) as exc:  # a reference outside this store
        raise gone from exc
    if not path.is_file():
        raise gone
    return FileResponse(path, media_type=_media_type(path), headers={"Cache-Control": CACHE})
