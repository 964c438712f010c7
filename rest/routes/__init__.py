"""The routes, one module per subject; each parses a request and answers it, no more.

The lab's API under ``/apiv1`` (``apiv1``): ``separate`` (a song in), ``account`` (models,
usage), ``jobs`` (queue, status, cancel), ``results`` (tracks, removal). ``site`` is what is
not the API: the page, the lab's callback receiver and the health check. The work behind
them: ``rest.submission`` and ``rest.read_models``; who may see what: ``rest.tenancy``.
"""

from __future__ import annotations

from rest.routes import account, jobs, results, separate
from rest.routes.site import add_site_routes

API_ROUTERS = tuple(module.router for module in (separate, account, jobs, results))
"""The ``/apiv1`` routers, in the order the app includes them."""

__all__ = ["API_ROUTERS", "add_site_routes"]
