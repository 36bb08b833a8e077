"""The console's HTML pages: server-rendered (Jinja2), charts as inline SVG, one small script.

How a browser gets in, with no change to how the JSON API authenticates: the Gate lets `/console` and
`/console/...` through without a Bearer key (gate.py, one check), and every page here admits a caller by
its session cookie instead. The login form posts an API key once; `Console.authenticate` checks it with the
Gate's own `KeyRing` (an operator key from `server.admin_keys_env`, or any caller when auth is off on
loopback). The cookie holds only a random id (HttpOnly, SameSite=Strict, Path=/console); the role it maps
to stays in this process (`sessions.SessionStore`), and every form that changes something carries the
session's CSRF token (403 without it). Without a session a browser (Accept: text/html) is sent to the login
page and anything else gets 401; a viewer sees the forms disabled and gets 403 if it posts anyway.

Everything goes through the service's `Console` (router/service/console_api.py), the same object the JSON
API (/v1/console/...) calls, so a page and the API never disagree: reads (overview, quality, review queue,
what-if) apply the serving policy's privacy rule (text and answers only with `privacy.log_text`), and
actions (label, learn job, write policy, reload, rollback) run in this process.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from slm_router.router.ops import jobs, overview, review
from slm_router.router.service.console import charts
from slm_router.router.service.console.sessions import COOKIE, Session, SessionStore
from slm_router.router.service.console_api import LEARN, Console, ConsoleError, Window

T = TypeVar("T")
HERE = Path(__file__).parent
LOGIN_COOKIE = "slm_console_login"
OUT_OF_SCOPE = "__out_of_scope__"
REFRESH_S = 10
JOB_REFRESH_S = 1
WHATIF_STEPS = 20  # thresholds 0, 0.05, ..., 1
NAV = (
    ("/console", "Overview"),
    ("/console/quality", "Quality"),
    ("/console/review", "Review"),
    ("/console/learn", "Learn"),
    ("/console/whatif", "What-if"),
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
UNAUTHORIZED = "sign in at /console/login (the console needs a session cookie)"

endpoints = APIRouter(prefix="/console", include_in_schema=False)

_STATIC = {p.name: p.read_bytes() for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}
_VERSION = hashlib.sha256(b"".join(_STATIC[name] for name in sorted(_STATIC))).hexdigest()[:10]
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
)
_env.globals["static"] = lambda name: f"/console/static/{name}?v={_VERSION}"
_env.filters["pct"] = lambda v: "-" if v is None else f"{float(v) * 100:.1f}%"
_env.filters["num"] = lambda v, digits=2: "-" if v is None else f"{float(v):,.{digits}f}"
_env.filters["when"] = lambda ts: (
    "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
)
_stores_lock = threading.Lock()


# --- sessions, forms, answers -------------------------------------------------------------------------


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _sessions(request: Request) -> SessionStore:
    """The app's session store (one per app, so two services in one process never share sessions)."""
    state = request.app.state
    with _stores_lock:
        store: SessionStore | None = getattr(state, "console_sessions", None)
        if store is None:
            store = state.console_sessions = SessionStore()
    return store


def _session(request: Request) -> Session | None:
    return _sessions(request).get(request.cookies.get(COOKIE))


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _sign_in(request: Request) -> Response:
    """No session: a browser goes to the login page (and back here after), anything else gets 401."""
    if _wants_html(request) and request.method == "GET":
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _secure(RedirectResponse(f"/console/login?next={quote(back)}", status_code=303))
    return _refuse(request, 401, "unauthorized", UNAUTHORIZED)


def _refuse(request: Request, status: int, kind: str, message: str) -> Response:
    """The JSON API's error shape for a script, a page for a browser."""
    if _wants_html(request):
        page = _page(request, "refused.html", _session(request), title=kind, error=message)
        page.status_code = status
        return page
    return _secure(JSONResponse({"error": {"type": kind, "message": message}}, status_code=status))


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(request: Request, template: str, session: Session | None, **context: Any) -> HTMLResponse:
    context.setdefault("page_title", context.get("title", "Console"))
    html = _env.get_template(template).render(
        session=session,
        nav=NAV,
        active=request.url.path,
        operator=session is not None and session.role == "operator",
        **context,
    )
    response = HTMLResponse(html)
    _secure(response)
    return response


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form body (the only kind the console's forms send), last value per field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _operator_form(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """The session and form of a post that changes something, or its refusal: no session 401, a missing or
    wrong CSRF token 403 `csrf`, a viewer 403 `forbidden`."""
    session = _session(request)
    if session is None:
        return _refuse(request, 401, "unauthorized", UNAUTHORIZED)
    form = await _form(request)
    if not session.csrf_ok(form.get("csrf")):
        return _refuse(request, 403, "csrf", "missing or invalid CSRF token: reload the page and try again")
    try:
        Console.require_operator(session.role)
    except ConsoleError as exc:
        return _refuse(request, exc.status, exc.kind, str(exc))
    return session, form


def _back(path: str, **query: str) -> RedirectResponse:
    """Post/redirect/get: the page again, with a notice or an error in its query."""
    qs = "&".join(f"{k}={quote(v)}" for k, v in query.items() if v)
    return RedirectResponse(path + (f"?{qs}" if qs else ""), status_code=303)


async def _act(path: str, action: Callable[[], T], **done: Callable[[T], str]) -> Response:
    """Run a console action off the event loop; back to `path` with what it did, or why it could not."""
    try:
        value = await run_in_threadpool(action)
    except ConsoleError as exc:
        return _back(path, error=str(exc))
    return _back(path, **{key: say(value) for key, say in done.items()})


def _window(value: str | None) -> Window:
    return value if value in overview.WINDOWS else "1h"  # type: ignore[return-value]


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(e["msg"]) for e in exc.errors())
    return str(exc)


# --- static, login, logout ----------------------------------------------------------------------------


@endpoints.get("/static/{name}")
async def static(name: str) -> Response:
    body = _STATIC.get(name)
    if body is None:
        return Response(status_code=404)
    response = _secure(Response(body, media_type=STATIC_TYPES[Path(name).suffix]))
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"  # the URL carries a version
    return response


@endpoints.get("/login")
async def login_page(request: Request, next: str = "/console", error: str = "") -> Response:
    """The sign-in form, with a login CSRF token (double-submit cookie): no other site signs a browser in."""
    if _session(request) is not None:
        return _secure(RedirectResponse(_safe_next(next), status_code=303))
    console = _console(request)
    token = secrets.token_urlsafe(24)
    response = _page(
        request,
        "login.html",
        None,
        title="Sign in",
        login_csrf=token,
        next=_safe_next(next),
        auth=console.keyring.keys is not None,
        admin_env=console.router.policy.server.admin_keys_env,
        error=error,
    )
    _cookie(request, response, LOGIN_COOKIE, token, max_age=900)
    return response


@endpoints.post("/login")
async def login(request: Request) -> Response:
    """An API key (checked once, by the Gate's KeyRing) for a session cookie; the key is not kept."""
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return _refuse(request, 403, "csrf", "the sign-in form expired: reload it and try again")
    caller = _console(request).authenticate(form.get("key", "").strip())
    target = _safe_next(form.get("next", ""))
    if caller is None:
        if _wants_html(request):
            return _secure(_back("/console/login", next=target, error="unknown API key"))
        return _refuse(request, 401, "unauthorized", "unknown API key")
    sid, _ = _sessions(request).create(caller.role, caller.key_id, caller.tenant)
    response = _secure(RedirectResponse(target, status_code=303))
    _cookie(request, response, COOKIE, sid)
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@endpoints.post("/logout")
async def logout(request: Request) -> Response:
    session = _session(request)
    form = await _form(request)
    if session is not None and session.csrf_ok(form.get("csrf")):
        _sessions(request).drop(request.cookies.get(COOKIE))
    response = _secure(RedirectResponse("/console/login", status_code=303))
    response.delete_cookie(COOKIE, path="/console")
    return response


def _safe_next(target: str) -> str:
    """Only back into the console: never an open redirect to another site."""
    if target.startswith("/console") and not target.startswith("/console/login") and "//" not in target:
        return target
    return "/console"


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# --- overview and quality -----------------------------------------------------------------------------


def _x_fmt(window: Window) -> Callable[[float], str]:
    return charts.clock if overview.WINDOWS[window] <= 86400 else charts.day_clock


def _overview(console: Console, window: Window) -> dict[str, Any]:
    try:
        o = console.stats(window)
    except ConsoleError as exc:
        return {"unavailable": str(exc)}
    x_fmt = _x_fmt(window)
    per = f"per {o.bucket_s // 60} min" if o.bucket_s < 3600 else f"per {o.bucket_s // 3600} h"
    nodes = sorted(o.latency, key=lambda n: n == "total")
    currency = console.router.policy.pricing.currency
    reasons = o.escalation_rate_by_reason
    return {
        "o": o,
        "currency": currency,
        "charts": [
            charts.bars(f"Requests {per}, by route", o.buckets, o.by_route, x_fmt=x_fmt),
            charts.bars(f"Requests {per}, by who answered", o.buckets, o.by_answered, x_fmt=x_fmt),
            charts.bars(
                "Escalation rate by reason (share of all requests)",
                list(reasons),
                {"escalated": list(reasons.values())},
                y_fmt=charts.pct,
                empty="nothing escalated in this window",
            ),
            charts.lines(
                f"Cost per hour ({currency})",
                o.hours,
                {"cost": o.cost_per_hour},
                x_fmt=x_fmt,
                reference=None if o.cost_cap_per_hour is None else ("budget cap", o.cost_cap_per_hour),
            ),
            charts.bars(
                "Latency per node (ms)",
                nodes,
                {"p50": [o.latency[n].p50_ms for n in nodes], "p95": [o.latency[n].p95_ms for n in nodes]},
                stacked=False,
            ),
        ],
    }


@endpoints.get("")
def overview_page(request: Request, window: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return _sign_in(request)
    name = _window(window)
    return _page(
        request,
        "overview.html",
        session,
        title="Overview",
        window=name,
        windows=list(overview.WINDOWS),
        refresh_s=REFRESH_S,
        **_overview(_console(request), name),
    )


@endpoints.get("/fragments/overview")
def overview_fragment(request: Request, window: str | None = None) -> Response:
    """The live part of the overview, refetched by console.js every REFRESH_S seconds."""
    session = _session(request)
    if session is None:
        return _sign_in(request)
    name = _window(window)
    return _page(request, "overview_live.html", session, window=name, **_overview(_console(request), name))


@endpoints.get("/quality")
def quality_page(request: Request, window: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return _sign_in(request)
    name = _window(window)
    context: dict[str, Any] = {}
    try:
        q = _console(request).quality(name)
    except ConsoleError as exc:
        context["unavailable"] = str(exc)
    else:
        no_shadow = "no shadow samples in this window (policy: shadow.sample_rate)"
        bins = [f"{b / overview.BINS:.1f}" for b in range(overview.BINS)]
        context["q"] = q
        context["charts"] = [
            charts.lines(
                "Reliability: router confidence vs shadow agreement",
                [b.mean_confidence for b in q.reliability],
                {"agreement": [b.agreement for b in q.reliability]},
                x_fmt=charts.num,
                y_fmt=charts.pct,
                y_max=1.0,
                x_range=(0.0, 1.0),
                diagonal=True,
                empty=no_shadow,
            ),
            charts.lines(
                "Shadow agreement per route",
                q.buckets,
                q.shadow_agreement,
                x_fmt=_x_fmt(name),
                y_fmt=charts.pct,
                y_max=1.0,
                empty=no_shadow,
            ),
            *(
                charts.bars(f"Router confidence: {route}", bins, {route: counts})
                for route, counts in q.confidence_histogram.items()
            ),
        ]
    return _page(
        request,
        "quality.html",
        session,
        title="Quality",
        window=name,
        windows=list(overview.WINDOWS),
        **context,
    )


# --- review -------------------------------------------------------------------------------------------


@endpoints.get("/review")
def review_page(request: Request, limit: int = 50, saved: str = "", error: str = "") -> Response:
    session = _session(request)
    if session is None:
        return _sign_in(request)
    console = _console(request)
    items: list[review.QueueItem] = []
    try:
        items = console.review(limit=max(1, min(limit, 500)), role=session.role)
    except ConsoleError as exc:
        error = error or str(exc)
    return _page(
        request,
        "review.html",
        session,
        title="Review",
        items=items,
        show_text=console.shows_text(session.role),
        text_logged=console.show_text,
        routes=console.router.routes,
        out_of_scope=OUT_OF_SCOPE,
        notice=f"Label saved for decision {saved}." if saved else "",
        error=error,
    )


@endpoints.post("/review/label")
async def label(request: Request) -> Response:
    checked = await _operator_form(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    route = form.get("route", "")
    try:
        item = review.Label(
            decision_id=int(form.get("decision_id", "")),
            route=None if route == OUT_OF_SCOPE else route or None,
            out_of_scope=route == OUT_OF_SCOPE,
            answer=form.get("answer", "").strip() or None,
        )
    except ValueError as exc:  # ValidationError is one
        return _back("/console/review", error=_why(exc))
    console = _console(request)
    return await _act(
        "/console/review", lambda: console.label(item, session.who), saved=lambda _: str(item.decision_id)
    )


# --- learn, write, reload, rollback -------------------------------------------------------------------


def _latest_learn(console: Console) -> jobs.Job | None:
    return next((job for job in console.jobs.jobs() if job.kind == LEARN), None)


def _job_context(console: Console, job_id: str) -> dict[str, Any]:
    job: jobs.Job | None = None
    if job_id:
        try:
            job = console.job(job_id)
        except ConsoleError as exc:
            return {"job": None, "job_error": str(exc)}
    else:
        job = _latest_learn(console)
    return {"job": job, "job_refresh_s": JOB_REFRESH_S}


@endpoints.get("/learn")
def learn_page(
    request: Request, job: str = "", notice: str = "", error: str = "", written: str = ""
) -> Response:
    session = _session(request)
    if session is None:
        return _sign_in(request)
    console = _console(request)
    labelled: list[review.LabelledDecision] = []
    try:
        found = console.decision_log()
        if found.path.is_file():
            labelled = review.labels(found, show_text=console.show_text)
    except ConsoleError as exc:
        error = error or str(exc)
    return _page(
        request,
        "learn.html",
        session,
        title="Learn",
        labelled=len(labelled),
        with_text=sum(1 for d in labelled if d.text),
        show_text=console.show_text,
        state=console.policy_state(),
        notice=notice,
        error=error,
        written=written,
        **_job_context(console, job),
    )


@endpoints.get("/fragments/job")
def job_fragment(request: Request, job: str = "") -> Response:
    """A learn job's progress bar, then its before/after numbers (console.js polls it until it is final)."""
    session = _session(request)
    if session is None:
        return _sign_in(request)
    return _page(request, "job.html", session, **_job_context(_console(request), job))


@endpoints.post("/learn/start")
async def learn_start(request: Request) -> Response:
    checked = await _operator_form(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    console = _console(request)
    try:
        started = await run_in_threadpool(console.start_learn, session.who)
    except ConsoleError as exc:
        return _back("/console/learn", error=str(exc))
    return _back("/console/learn", job=started.job_id)


@endpoints.post("/learn/write")
async def learn_write(request: Request) -> Response:
    checked = await _operator_form(request)
    if isinstance(checked, Response):
        return checked
    _, form = checked
    console = _console(request)
    job_id, name = form.get("job_id", ""), form.get("name", "").strip() or None
    overwrite = form.get("overwrite_live") == "on"
    return await _act(
        "/console/learn",
        lambda: console.write_policy(job_id, name, overwrite),
        notice=lambda written: f"Wrote {written.path}. Reload it below to serve it.",
        job=lambda _: job_id,
        written=lambda written: written.name,
    )


@endpoints.post("/policy/reload")
async def policy_reload(request: Request) -> Response:
    checked = await _operator_form(request)
    if isinstance(checked, Response):
        return checked
    _, form = checked
    console = _console(request)
    name = form.get("name", "").strip() or None
    return await _act(
        "/console/learn",
        lambda: console.reload(name),
        notice=lambda state: f"Serving {state.live} now; the previous policy is kept for rollback.",
    )


@endpoints.post("/policy/rollback")
async def policy_rollback(request: Request) -> Response:
    checked = await _operator_form(request)
    if isinstance(checked, Response):
        return checked
    console = _console(request)
    return await _act(
        "/console/learn",
        console.rollback,
        notice=lambda state: f"Rolled back: serving {state.live or 'the in-process policy'} again.",
    )


# --- what-if ------------------------------------------------------------------------------------------


@endpoints.get("/whatif")
def whatif_page(request: Request, route: str = "", threshold: float | None = None) -> Response:
    """The cost-quality curve of one route's threshold (or all routes'), replayed from recorded scores;
    the chosen threshold against the policy's, before anything is written."""
    session = _session(request)
    if session is None:
        return _sign_in(request)
    console = _console(request)
    policy = console.router.policy
    routes = console.router.routes
    chosen_route = route if route in routes else None
    current = policy.threshold(chosen_route) if chosen_route else None
    chosen = min(max(threshold if threshold is not None else (current or 0.5), 0.0), 1.0)
    grid = [round(i / WHATIF_STEPS, 4) for i in range(WHATIF_STEPS + 1)]
    context: dict[str, Any] = {}
    try:
        points = console.whatif(chosen_route, [*grid, chosen, *([current] if current is not None else [])])
    except ConsoleError as exc:
        context["unavailable"] = str(exc)
        points = []
    curve = points[: len(grid)]
    if curve:
        xs = [p.threshold for p in curve]
        context["charts"] = [
            charts.lines(
                "Escalation rate and accuracy (labelled rows) by threshold",
                xs,
                {
                    "escalation rate": [p.escalation_rate for p in curve],
                    "accuracy": [p.accuracy for p in curve],
                },
                x_fmt=charts.num,
                y_fmt=charts.pct,
                y_max=1.0,
                x_range=(0.0, 1.0),
                marker=chosen,
            ),
            charts.lines(
                f"Cost per 1k requests ({policy.pricing.currency}) by threshold",
                xs,
                {"cost per 1k": [p.cost_per_1k for p in curve]},
                x_fmt=charts.num,
                x_range=(0.0, 1.0),
                marker=chosen,
            ),
        ]
        context["at_chosen"] = points[len(grid)]
        context["at_current"] = points[len(grid) + 1] if current is not None else None
    return _page(
        request,
        "whatif.html",
        session,
        title="What-if",
        routes=routes,
        route=chosen_route or "",
        threshold=chosen,
        current=current,
        **context,
    )
