"""The REST front end: the lab's ``apiv1`` API, a page for people, health and metrics.

Run as ``python -m uvicorn rest.app:app --port 5000``; every setting comes from the
environment (``common.settings``). Jobs follow the worker's contract in
``common.contract`` and the queue protocol in ``common.queue``.
"""
