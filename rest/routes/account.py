"""What a client may ask for and what it has used: ``/apiv1/models``, ``/apiv1/usage``."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from rest.backend import BackendDep, client_of
from rest.routes import apiv1
from rest.schemas import ModelsResponse, UsageResponse
from rest.tenancy import TenancyDep

router = apiv1.router()


@router.get("/usage", response_model=UsageResponse)
async def usage(request: Request, backend: BackendDep, tenancy: TenancyDep) -> dict[str, Any]:
    """The caller's own figures: audio seconds and result MB its jobs were charged, with the
    quotas (``limit``: null when off) and when their windows reset, and its latest jobs by
    state. A client is its API key's name, else its token or address."""
    client = tenancy.name or client_of(request)
    return await run_in_threadpool(backend.fair_share.usage, client, client)


@router.get("/models", response_model=ModelsResponse)
async def models(backend: BackendDep, tenancy: TenancyDep) -> dict[str, Any]:
    """The models a client may ask for (``model`` of ``/separate``): name, stems, licence,
    source, whether it is the default, and the SHA-256 of its weights (``weights_sha256``,
    which each job's status and each track's metadata name; null where the registry does not
    pin it). With API_KEYS, a client limited to some models sees only those."""
    return {"models": backend.models.shown(backend.models_of(tenancy.name))}
