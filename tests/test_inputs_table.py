"""Every input the service accepts has a row in ``docs/inputs.md``, with its bound and the test
that holds it: a route, parameter or body field of the OpenAPI schema, a field of the job
contract, a header or query value the REST code reads, a Redis key a client may write.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import devstack
from common.contract import Callback, Job, Keys
from common.settings import Settings
from rest.app import create_app

TABLE = devstack.ROOT / "docs" / "inputs.md"
ROUTE_ROW = "(the route)"
KEY_ROW = "(the key)"
QUEUE_KEY = f"`{Keys.QUEUE}` (Redis list)"
CLIENT_KEYS = {QUEUE_KEY, f"`{Keys.cancel('<id>')}` (Redis key)"}
"""The Redis keys a client may write (docs/design.md "Jobs on Redis", docs/api.md "Cancel")."""
# ``request.headers.get("range")``, ``request.query_params.get("access_token")``, ...
_READ_RE = re.compile(r"""(headers|query_params)\.get\(\s*b?["']([A-Za-z0-9_-]+)["']""")


def table_rows() -> dict[tuple[str, str], tuple[str, str]]:
    """``(route or key, input) -> (bound, held by)`` of every row of the table."""
    rows = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("route or key", "---"):
            continue
        rows[(cells[0], cells[1])] = (cells[2], cells[3])
    return rows


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def api_schema() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def schema_inputs(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Every route, parameter and body field of an OpenAPI schema, as the table names them."""
    found = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            route = f"`{method.upper()} {path}`"
            found.add((route, ROUTE_ROW))
            for parameter in operation.get("parameters", []):
                found.add((route, f"{parameter['in']} `{parameter['name']}`"))
            body = operation.get("requestBody", {}).get("content", {})
            for content_type, content in body.items():
                kind = "form" if content_type.startswith("multipart/") else "JSON"
                for name in _resolve(spec, content["schema"]).get("properties", {}):
                    found.add((route, f"{kind} `{name}`"))
    return found


def contract_inputs(job: type[Job] = Job) -> set[tuple[str, str]]:
    """Every field of a job payload (``toWorkers``) and every key a client may write."""
    fields = [*job.model_fields, *(f"callback.{name}" for name in Callback.model_fields)]
    return {(QUEUE_KEY, f"job `{name}`") for name in fields} | \
        {(key, KEY_ROW) for key in CLIENT_KEYS}


def values_read() -> set[str]:
    """Headers and query values the REST code reads itself, as ``header `name```."""
    found = set()
    for source in (devstack.ROOT / "rest").rglob("*.py"):
        for kind, name in _READ_RE.findall(source.read_text(encoding="utf-8")):
            found.add(f"{'header' if kind == 'headers' else 'query'} `{name.lower()}`")
    return found


def test_every_route_and_field_of_the_schema_has_a_row():
    rows = table_rows()
    missing = sorted(schema_inputs(api_schema()) - set(rows))
    assert not missing, f"inputs without a row in {TABLE.name} (add one, with its bound): " \
                        f"{missing}"


def test_every_field_of_the_job_contract_and_every_client_key_has_a_row():
    missing = sorted(contract_inputs() - set(table_rows()))
    assert not missing, f"contract inputs without a row in {TABLE.name}: {missing}"


def test_every_header_and_query_value_the_code_reads_has_a_row():
    named = {re.sub(r"`([^`]*)`", lambda m: f"`{m.group(1).lower()}`", value)
             for _, value in table_rows()}
    missing = sorted(value for value in values_read()
                     if not any(value in row or value.replace("header", "headers") in row
                                for row in named))
    assert not missing, f"values read by rest/ without a row in {TABLE.name}: {missing}"


def test_no_row_for_an_api_route_that_is_gone():
    routes = {route for route, _ in schema_inputs(api_schema())}
    stale = sorted(route for route, _ in table_rows()
                   if "/apiv1/" in route and route not in routes)
    assert not stale, f"rows for routes the API no longer has: {stale}"


@pytest.mark.parametrize("row", sorted(table_rows().items()), ids=lambda r: " ".join(r[0]))
def test_each_row_has_a_bound_and_tests_that_exist(row):
    (_, _), (bound, held_by) = row
    assert bound, "a row without its bound"
    files = re.findall(r"`(tests/[^`:]+\.py)`", held_by)
    assert files, f"a row without the test that holds it: {held_by!r}"
    absent = [name for name in files if not (devstack.ROOT / name).is_file()]
    assert not absent, f"no such test file: {absent}"


def test_the_checks_see_a_new_input():
    """A field added to the job contract, a route or a field added to the API: each has no
    row, and the checks above name it."""
    rows = set(table_rows())

    class Extended(Job):
        surprise: int | None = None

    assert contract_inputs(Extended) - rows == {(QUEUE_KEY, "job `surprise`")}
    app = create_app(Settings())

    def new_route(depth: int = 0) -> dict[str, int]:
        return {"depth": depth}
    app.add_api_route("/apiv1/new", new_route, methods=["GET"])
    assert schema_inputs(app.openapi()) - rows == {("`GET /apiv1/new`", ROUTE_ROW),
                                                   ("`GET /apiv1/new`", "query `depth`")}
