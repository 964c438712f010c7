"""A song's tracks: ``/apiv1/track/{songhash}/{track}`` (GET, HEAD) and
``/apiv1/remove/{songhash}/{track}`` (DELETE, and GET as the lab's clients send it)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from minio.error import S3Error

from common.contract import TRACKS
from common.formats import all_encodings
from common.numbers import AsciiInt, ascii_int
from common.retention import MISSING_OBJECT
from rest.backend import Backend, BackendDep
from rest.read_models import absent_reason, track_encoding, track_key
from rest.removal import Removed, remove_tracks
from rest.routes import apiv1
from rest.schemas import RemoveResponse
from rest.tenancy import TenancyDep
from rest.tracks import stream_track

log = logging.getLogger("rest")

router = apiv1.router()


@router.get("/track/{songhash}/{track}", response_class=Response,
            responses={200: {"content": {"audio/mpeg": {}, "audio/flac": {}, "audio/wav": {}}},
                       206: {}, 307: {}, 416: {}})
def track(songhash: str, track: str, request: Request, backend: BackendDep,
          tenancy: TenancyDep, redirect: bool = False, download: bool = False,
          model: str | None = None, bitrate: AsciiInt | None = None,
          bit_depth: AsciiInt | None = None) -> Response:
    """Stream a track (Range requests answered 206); ``?redirect=1``: a presigned URL, signed
    as the read-only user ``MINIO_PRESIGN_ACCESS_KEY`` (without one, the track itself).

    ``track`` may end in ``.mp3`` (the default), ``.flac`` or ``.wav``, with ``?bitrate=``
    (MP3) or ``?bit_depth=24`` (FLAC, WAV) for the job's variant; the lab's ``base`` means
    ``bass``. ``?model=`` names the model whose track is wanted (default: ``DEMUCS_MODEL``).
    With API_KEYS, only the caller's own tracks.
    """
    name, encoding = track_encoding(backend, track, bitrate, bit_depth)
    bucket = backend.settings.output_bucket
    key = track_key(backend, songhash, name, model, encoding)
    if not tenancy.owns(songhash, model or backend.settings.demucs_model, name, encoding):
        raise HTTPException(404, absent_reason(backend, tenancy, songhash, name))
    try:
        stat = backend.storage.stat_object(bucket, key)
    except S3Error as error:
        if error.code in MISSING_OBJECT:
            raise HTTPException(404, absent_reason(backend, tenancy, songhash, name)) from None
        raise
    if redirect and backend.presigner is not None:  # never the main user's credentials
        url = backend.presigner.presigned_get_object(
            bucket, key, expires=timedelta(seconds=presign_ttl_s(backend, request)))
        return RedirectResponse(url, status_code=307)
    disposition = "attachment" if download else "inline"
    extension = ".mp3" if name == "original" else encoding.extension
    headers = {"ETag": f'"{stat.etag}"', "Content-Disposition":
               f'{disposition}; filename="{songhash[:12]}-{name}{extension}"'}
    media_type = "audio/mpeg" if name == "original" else encoding.content_type
    if request.method != "HEAD":
        request.app.state.load.check_send_room()
    return stream_track(backend.storage, bucket, key, int(stat.size or 0),
                        request.headers.get("range"), headers,
                        head_only=request.method == "HEAD", media_type=media_type)


@router.delete("/remove/{songhash}/{track}", response_model=RemoveResponse)
def remove(songhash: str, track: str, backend: BackendDep, tenancy: TenancyDep,
           model: str | None = None, bitrate: AsciiInt | None = None,
           bit_depth: AsciiInt | None = None) -> dict[str, Any]:
    """Delete a track of a song (``vocals.flac``: in that format); ``all`` deletes every track
    of it in every format (of ``?model=``). The song's upload goes too once no job needs it.

    With API_KEYS the caller's own tracks: an object goes once no other client owns it.
    """
    if track == "all":
        track_key(backend, songhash, "vocals", model)  # 404 for a bad songhash or model
        names: tuple[str, ...] = TRACKS
        encodings = all_encodings(backend.settings.mp3_bitrate_kbps)
    else:
        name, encoding = track_encoding(backend, track, bitrate, bit_depth)
        track_key(backend, songhash, name, model, encoding)
        names, encodings = (name,), [encoding]
    deletable, kept_for_others = tenancy.release(
        songhash, model or backend.settings.demucs_model, names, encodings)
    removed = remove_tracks(backend, songhash, model, deletable) if deletable else \
        Removed([], False)
    labels = removed.labels + kept_for_others
    if not labels:
        raise HTTPException(404, f"song {songhash} has no track {track!r} to remove")
    log.info("song %s: removed %s%s", songhash, ", ".join(labels),
             " and its upload" if removed.upload_removed else "")
    return {"hash": songhash, "removed": labels, "upload_removed": removed.upload_removed,
            "reason": f"Removed {', '.join(labels)}"
                      + (" and the song's upload" if removed.upload_removed else "")}


router.add_api_route("/track/{songhash}/{track}", track, methods=["HEAD"],
                     include_in_schema=False)
router.add_api_route("/remove/{songhash}/{track}", remove, methods=["GET"],
                     response_model=RemoveResponse, operation_id="remove_with_get",
                     summary="Remove (with GET, as the lab's clients do)")


def presign_ttl_s(backend: Backend, request: Request) -> int:
    """How long a presigned URL lives: ``PRESIGN_TTL_S``, but no longer than the signed link
    it was asked through (``rest.links``, already checked), which would otherwise be
    stretched from its minutes to the presign's hour."""
    ttl_s = backend.settings.presign_ttl_s
    if "sig" in request.query_params:
        left_s = ascii_int(request.query_params.get("expires", "0")) - time.time()
        ttl_s = min(ttl_s, max(1, int(left_s)))
    return ttl_s
