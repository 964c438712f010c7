"""The lab's API: its routes live under ``/apiv1``, behind the token check (``rest.backend``),
and answer errors as ``ErrorResponse``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from rest.backend import require_token
from rest.schemas import ERRORS


def router() -> APIRouter:
    """A router of ``/apiv1`` routes (each route module has one)."""
    return APIRouter(prefix="/apiv1", dependencies=[Depends(require_token)], responses=ERRORS)
