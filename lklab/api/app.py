"""Read-only HTTP JSON API over the merged Lambda views, T and freshness, and the published Kappa
views, their freshness and jobs (FastAPI, 127.0.0.1 by default).

Every query goes through SQLAlchemy Core with bound parameters; bad parameters get a 4xx with
a one-line message naming the parameter, and so do parameters an endpoint does not take (a
misspelt filter must not answer with every row). `city` and `driver` are accepted as aliases
of `key`, like the CLI's --city and --driver. /health answers 503 when the speed layer is not
healthy. A view whose producer is stale answers flagged (`stale`), or 503 with the reason when
its reader policy is `error` (Settings.reader_policy_for). /docs and /redoc load Swagger UI and
ReDoc from files shipped in a package (fastapi-offline), so they render without internet access.

Bearer token: with Settings.api_token (LKLAB_API_TOKEN) set, every request but /health must carry
`Authorization: Bearer <token>` (compared in constant time), else 401 with a one-line detail and
`WWW-Authenticate: Bearer`. Without a token the API is open, so `lklab serve` binds a
non-loopback address only when a token is configured (serve_refusal)."""
from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from lklab.api import dashboard
from lklab.kappa import KAPPA_VIEWS
from lklab.kappa import jobs as kappa_jobs
from lklab.kappa import query as kappa
from lklab.lambda_arch import merge
from lklab.lambda_arch.builds import batch_views
from lklab import views
from lklab.core.config import Settings
from lklab.core.events import parse_time
from lklab.core.staleness import StaleAnswer, check_reader_policy_views
from lklab.serving.store import make_engine

MAX_ROWS = 100_000
KEY_ALIASES = {"city": "city", "driver_id": "driver"}  # entity → the alias of `key` that names it
MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/health"})  # probes and load balancers check health without credentials


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x) or `localhost`; any other name or address is not."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a host name may resolve anywhere: treated as reachable from outside
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def api_token(settings: Settings) -> str | None:
    """The configured bearer token, or None; ValueError (one line, never the token) when too short to be one."""
    if settings.api_token is None:
        return None
    token = settings.api_token.get_secret_value()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"LKLAB_API_TOKEN has {len(token)} characters; a bearer token needs at least {MIN_TOKEN_CHARS} "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def serve_refusal(host: str, settings: Settings) -> str | None:
    """Why `lklab serve` must not bind `host` (one line), or None: a non-loopback address with no token."""
    if is_loopback(host) or api_token(settings) is not None:
        return None
    return (f"refusing to serve on {host or 'every address'}: it is not a loopback address and no bearer token is "
            "configured (set LKLAB_API_TOKEN, or bind 127.0.0.1)")


class ErrorDetail(BaseModel):
    """Every error the API answers: one line saying what was wrong."""

    detail: str = Field(description="one line: what was wrong, naming the parameter")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


INVALID_422 = {422: _error("a query parameter is invalid, unknown, empty or conflicting (named in `detail`)")}
UNAUTHORIZED_401 = {401: _error("no bearer token, or the wrong one (only when the API is configured with a token)")}


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise HTTPException(422, f"query parameter '{name}': {value!r} is not an ISO-8601 time like 2026-11-17T10:00Z") from None


def _query_names(dependant: Dependant) -> set[str]:
    return {f.alias for f in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


def only_known_query_parameters(request: Request) -> None:
    """422 for a query parameter the endpoint does not declare, naming it and the accepted ones."""
    accepted = _query_names(request.scope["route"].dependant)
    unknown = sorted(set(request.query_params) - accepted)
    if unknown:
        raise HTTPException(422, f"unknown query parameter {unknown[0]!r}; {request.url.path} accepts "
                                 f"{', '.join(sorted(accepted)) if accepted else 'none'}")


def _one_key(view: str, given: dict[str, str | None]) -> str | None:
    """`key`, or its alias `city` / `driver` (the one that names the view's entity)."""
    named = {name: value for name, value in given.items() if value is not None}
    if len(named) > 1:
        raise HTTPException(422, f"query parameters {' and '.join(repr(n) for n in named)} both filter the key: give one")
    if not named:
        return None
    [(name, value)] = named.items()
    entity = views.VIEWS[view].entity
    alias = KEY_ALIASES.get(entity)
    if name != "key" and name != alias:
        use = f"'key' or '{alias}'" if alias else "'key'"
        raise HTTPException(422, f"query parameter {name!r}: {view} is keyed by {entity} (use {use})")
    if not value:
        raise HTTPException(422, f"query parameter {name!r} is empty")
    return value


@dataclass(frozen=True)
class RowQuery:
    """Which rows of which view a reader asks for: the same parameters for Lambda and Kappa."""

    view: str
    key: str | None
    start: datetime | None
    end: datetime | None
    limit: int


def row_query(
    view: Annotated[str, Path(description="the view", json_schema_extra={"enum": list(views.VIEWS)})],
    key: Annotated[str | None, Query(max_length=128, description="the view's key: city, driver_id or user_id")] = None,
    city: Annotated[str | None, Query(max_length=128, description="alias of key, for views keyed by city")] = None,
    driver: Annotated[str | None, Query(max_length=128, description="alias of key, for driver_earnings_daily")] = None,
    start: Annotated[str | None, Query(alias="from", description="window start ≥ this ISO time", examples=["2026-11-17T10:00Z"])] = None,
    end: Annotated[str | None, Query(alias="to", description="window start < this ISO time", examples=["2026-11-17T11:00Z"])] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 10_000,
) -> RowQuery:
    """The view (404 if unknown) and its row filter, checked (422 with one line naming the parameter)."""
    if view not in views.VIEWS:
        raise HTTPException(404, f"unknown view {view!r}; one of: {', '.join(views.VIEWS)}")
    key = _one_key(view, {"key": key, "city": city, "driver": driver})
    lo, hi = _time(start, "from"), _time(end, "to")
    if lo and hi and lo >= hi:
        raise HTTPException(422, f"query parameter 'from' ({start}) is not before 'to' ({end})")
    return RowQuery(view, key, lo, hi, limit)


def _health_json(h: merge.SpeedHealth) -> dict[str, Any]:
    return {"healthy": h.healthy, "reason": h.reason, "heartbeat_age_s": h.heartbeat_age_s, "lag": h.lag}


def _describe(spec: views.ViewSpec) -> dict[str, Any]:
    return {"name": spec.name, "entity": spec.entity, "window_s": spec.window_s, "value": spec.value_column,
            "values": list(spec.value_columns), "measure": spec.measure.kind, "speed_layer": spec.measure.speed_layer,
            "logic_version": spec.logic_version}


STALE_503 = {503: _error("the view's producer is stale and its reader policy is `error`: "
                         '{"detail": "<view> is stale: <reason> (reader policy error)"}')}
VIEW_RESPONSES = {404: _error("no such view, or (Lambda) a view this lab's batch layer does not build"), **STALE_503}


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse(status_code=401, content={"detail": detail}, headers={"WWW-Authenticate": "Bearer"})


def bearer_guard(token: str) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """HTTP middleware: every path but OPEN_PATHS (the docs and unknown paths too) needs the token."""
    expected = token.encode()

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        given = request.headers.get("authorization")
        if given is None:
            return _unauthorized("this API needs a bearer token: send Authorization: Bearer <LKLAB_API_TOKEN>")
        scheme, _, credentials = given.strip().partition(" ")
        # constant time: no timing oracle on the token (the scheme name is case-insensitive, RFC 9110)
        if scheme.lower() != "bearer" or not secrets.compare_digest(credentials.strip().encode(), expected):
            return _unauthorized("wrong bearer token (Authorization: Bearer <LKLAB_API_TOKEN>)")
        return await call_next(request)

    return guard


def _document_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI document, on every operation but OPEN_PATHS."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path in OPEN_PATHS:
                        operation["responses"].pop("401", None)
                    else:
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings) -> FastAPI:
    try:
        check_reader_policy_views(settings, views.VIEWS)
    except ValueError as exc:
        raise ValueError(f"reader_policy_views: {exc}") from None
    built = batch_views(settings)  # an unknown name is refused at start, not at the first read
    token = api_token(settings)
    engine = make_engine(settings)
    app = FastAPIOffline(title="lklab query API", version="1",
                         description="Merged Lambda views, T and freshness; published Kappa views, their freshness and jobs. Read-only.",
                         dependencies=[Depends(only_known_query_parameters)],
                         responses={**INVALID_422, **(UNAUTHORIZED_401 if token else {})})
    if token:
        app.middleware("http")(bearer_guard(token))
        _document_bearer(app)

    def published_versions() -> dict[str, str | None]:
        with engine.connect() as conn:
            return {name: kappa.published(conn, name) for name in KAPPA_VIEWS}

    @app.exception_handler(StaleAnswer)
    async def stale_503(_request: Request, exc: StaleAnswer) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def one_line_422(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
        return JSONResponse(status_code=422, content={"detail": f"query parameter '{where}': {first.get('msg')}"})

    @app.get("/views")
    def list_views() -> dict[str, Any]:
        return {"views": [_describe(s) for s in views.VIEWS.values()]}

    @app.get("/views/{view}", responses=VIEW_RESPONSES)
    def read_view(q: Annotated[RowQuery, Depends(row_query)]) -> dict[str, Any]:
        """The merged view; batch-only and `stale` while the speed layer is unhealthy (503 under policy error)."""
        if q.view not in built:
            raise HTTPException(404, f"{q.view} is not built by this lab's batch layer (batch_views: {', '.join(built)})")
        return merge.answer_json(merge.serve(engine, settings, q.view, q.key, q.start, q.end), q.limit)

    @app.get("/kappa/views")
    def list_kappa_views() -> dict[str, Any]:
        """The views Kappa runs, each with its published version (`<view>__v<N>`, or null)."""
        published = published_versions()
        return {"views": [_describe(views.VIEWS[name]) | {"version": published[name]} for name in KAPPA_VIEWS]}

    @app.get("/kappa/views/{view}", responses=VIEW_RESPONSES)
    def read_kappa_view(q: Annotated[RowQuery, Depends(row_query)]) -> dict[str, Any]:
        """The published version's rows with its freshness: version, running, lag, watermark,
        heartbeat_age_s, stale, stale_reason and the reader policy (503 when stale under policy error)."""
        return kappa.answer_json(kappa.serve(settings, engine, q.view, q.key, q.start, q.end), q.limit)

    @app.get("/kappa/status")
    def kappa_status() -> dict[str, Any]:
        """Every Kappa job that has run in this lab, running or not, and whether it is the published one."""
        found, published = kappa_jobs.status(settings), published_versions()
        return {"jobs": [{"output": j.output, "view": j.view, "version": j.version, "running": j.running, "pid": j.pid,
                          "lag": j.lag, "watermark": j.watermark.isoformat() if j.watermark else None,
                          "heartbeat_age_s": j.heartbeat_age_s, "stale": j.stale, "stale_reason": j.stale_reason,
                          "beyond_horizon": j.beyond_horizon, "published": published.get(j.view) == j.output} for j in found]}

    @app.get("/lambda/status")
    def status() -> dict[str, Any]:
        st = merge.lambda_status(engine, settings)
        build = st.build.model_dump(mode="json") if st.build else None
        return {
            "T": build["final_through"] if build else None,
            "build": build,
            "batch_age_s": st.batch_age_s,
            "speed": {**_health_json(st.speed),
                      "watermark": st.speed_watermark.isoformat() if st.speed_watermark else None,
                      "final_through": st.speed_final_through.isoformat() if st.speed_final_through else None},
            "layers": [layer.__dict__ for layer in st.layers],
            "batch_blocked": merge.blocked_json(st.batch_blocked),
        }

    dashboard.mount(app, settings, engine, {404: _error("no such view")})

    @app.get("/health", responses={503: {"description": "the speed layer is not healthy (same body)"}})
    def health(response: Response) -> dict[str, Any]:
        speed = merge.current_speed_health(engine, settings)
        if not speed.healthy:
            response.status_code = 503  # load balancers and probes read the status, not the body
        return {"speed": _health_json(speed)}

    return app
