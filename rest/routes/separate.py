"""``POST /apiv1/separate``: a song in, a job out (``rest.submission``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from rest.backend import BackendDep, client_of
from rest.ingest.uploads import receive_upload
from rest.routes import apiv1
from rest.schemas import SEPARATE_BODY, ErrorResponse, SeparateResponse
from rest.submission import submit
from rest.tenancy import TenancyDep

router = apiv1.router()


@router.post("/separate", response_model=SeparateResponse, openapi_extra=SEPARATE_BODY,
             responses={413: {"model": ErrorResponse}})
async def separate(request: Request, backend: BackendDep, tenancy: TenancyDep
                   ) -> dict[str, str]:
    """Queue a song: JSON ``{"mp3": "<base64>", ...}`` or a multipart upload (``file``).

    At most ``RATE_LIMIT_PER_MIN`` a minute per client (429 with ``Retry-After`` past it).
    The body is streamed to a temp file as it arrives; 503 while MAX_CONCURRENT_UPLOADS
    others are being handled, 429 while MAX_UPLOADS_PER_CLIENT of the caller's are; 408 for a
    body slower than BODY_TIMEOUT_S and BODY_MIN_KBPS allow. With API_KEYS, 429 while the
    caller has CLIENT_MAX_WAITING jobs waiting, and 403 for ``priority: high`` unless
    PRIORITY_CLIENTS names the caller; 429 past QUOTA_AUDIO_S_PER_DAY or QUOTA_STORED_MB.
    """
    client = client_of(request)
    await run_in_threadpool(backend.rate_limit.check, client)
    with request.app.state.upload_slots.hold(client):
        upload = await receive_upload(request, backend.settings)
        try:
            answer = await run_in_threadpool(submit, backend, upload, tenancy,
                                             tenancy.name or client)
        finally:
            upload.discard()
    await run_in_threadpool(backend.fair_share.record_job, tenancy.name or client,
                            answer["id"])
    return answer
