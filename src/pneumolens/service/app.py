"""FastAPI app: thin routes over the Engine, which is loaded once in the lifespan."""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumolens.data.dicom import device_of, header_dataset, uids_of
from pneumolens.data.images import ImageReadError
from pneumolens.data.scope import given_age
from pneumolens.explain.explainer import METHODS
from pneumolens.integration.hl7_orders import OrderBook, filed_under, order_for
from pneumolens.monitoring.agreement import agreement_in
from pneumolens.monitoring.audit import AuditLog, parse_since, sha256_bytes
from pneumolens.monitoring.drift import TooFewFilms, drift_in
from pneumolens.service.engine import Engine
from pneumolens.service.schemas import NOTICE, Error, Prediction, Review, ReviewRequest
from pneumolens.service.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
AUDIT_OFF = "the audit trail is switched off on this server (PNEUMOLENS_AUDIT=false)"


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def _keep_until_done(running: set[asyncio.Future], work: asyncio.Future) -> None:
    """Track a prediction answered 504 whose thread goes on (a thread cannot be cancelled), so that
    shutdown waits for it; its late result or error is dropped, as the client already has its answer."""
    running.add(work)

    def done(f: asyncio.Future) -> None:
        running.discard(f)
        if not f.cancelled():
            f.exception()  # retrieved, so asyncio does not log it as lost

    work.add_done_callback(done)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    limit = int(settings.max_upload_mb * 1024 * 1024)
    # opened now, so that a book that cannot be opened stops ``serve`` before the model loads
    orders = OrderBook(settings.orders, keep_days=None) if settings.orders else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = await run_in_threadpool(Engine, settings)
        app.state.waiting = asyncio.Semaphore(settings.max_concurrent)
        app.state.audit = AuditLog(settings.audit_url) if settings.audit else None
        app.state.running = set()  # predictions answered 504 whose thread still runs
        yield
        if app.state.running:  # the model must outlive them: a thread stopped mid-inference aborts the process
            log.info("waiting for %d prediction(s) answered 504 to finish", len(app.state.running))
            await asyncio.wait(app.state.running, timeout=settings.shutdown_grace_s)

    app = FastAPI(title="pneumolens", description=NOTICE, version="1", lifespan=lifespan)

    if settings.cors_origins:  # closed unless configured: no Access-Control-Allow-* headers at all
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token is not None and request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                response = _error(401, "this server needs an API token: send 'Authorization: Bearer <token>'")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await call_next(request)

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next):
        # Refuse before the body is read, from the declared length; a body without one is capped
        # again when read.
        length = request.headers.get("content-length")
        if request.url.path.startswith("/api/") and length and length.isdigit() and int(length) > limit:
            return _error(413, f"upload of {int(length):,} bytes exceeds the {limit:,}-byte limit")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)  # no request content is logged
        return _error(500, "internal error; the request was not processed")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=None)
    async def healthz(request: Request) -> dict[str, str] | JSONResponse:
        if getattr(request.app.state, "engine", None) is None:
            return _error(503, "model not loaded")
        return {"status": "ok"}

    @app.get("/api/v1/model")
    async def model_card(request: Request) -> dict:
        return request.app.state.engine.card()

    @app.get("/api/v1/model/card", response_class=Response, responses={200: {"content": {"text/markdown": {}}}})
    async def model_card_markdown(request: Request) -> Response:
        """The model card in Markdown, as ``pneumolens card`` writes it."""
        from pneumolens.evaluation.model_card import model_card as write_card

        card = await run_in_threadpool(write_card, request.app.state.engine.loaded)
        return Response(card, media_type="text/markdown; charset=utf-8")

    @app.post(
        "/api/v1/predict",
        response_model=Prediction,
        responses={400: {"model": Error}, 413: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}},
    )
    async def predict(
        request: Request,
        file: Annotated[UploadFile | None, File(description="JPEG, PNG, TIFF or DICOM")] = None,
        explain: Annotated[bool, Query(description="add a heatmap_png")] = True,
        method: Annotated[str, Query(description="occlusion, gradcam or lime")] = settings.default_method,
        image: Annotated[bool, Query(description="add image_png: the image as read (for DICOM in a browser)")] = False,
        age: Annotated[
            str | None,
            Form(
                description="a form field beside 'file' (not in the URL, which access logs keep): the patient's age "
                "where the file does not say it (a JPEG or PNG), years (45, 2.5) or a DICOM age (030M), for the "
                "older_than_training caution; used instead of a DICOM header's; never returned, logged or stored",
            ),
        ] = None,
        fmt: Annotated[
            Literal["json", "fhir", "fhir-bundle", "hl7"],
            Query(
                alias="format",
                description="fhir: answer with a FHIR R4 Observation instead; fhir-bundle: with it and a "
                "DiagnosticReport as a transaction Bundle, ready to post to a FHIR server; hl7: with an HL7 v2.5.1 "
                "ORU^R01 message (the patient and order from a DICOM upload's header)",
            ),
        ] = "json",
    ):
        if file is None:
            return _error(422, "send the image as multipart/form-data field 'file'")
        if method not in METHODS:
            return _error(422, f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        try:
            years = given_age(age)
        except ValueError as e:  # the message names the field, not the value
            return _error(422, str(e))
        data = await file.read(limit + 1)
        if len(data) > limit:
            return _error(413, f"upload exceeds the {limit:,}-byte limit")
        if not data:
            return _error(400, "the uploaded file is empty")
        name = Path(file.filename or "upload").name  # the client's name, never used as a path here
        waiting: asyncio.Semaphore = request.app.state.waiting
        if waiting.locked():
            return _error(503, "too many requests waiting for the model; retry shortly")
        engine: Engine = request.app.state.engine
        audit: AuditLog | None = request.app.state.audit
        async with waiting:
            work = asyncio.ensure_future(run_in_threadpool(engine.predict, data, name, explain, method, image, years))
            try:
                result = await asyncio.wait_for(asyncio.shield(work), settings.request_timeout_s)
            except ImageReadError as e:  # 422: a DICOM film the model is not for (a lateral view, a knee)
                if audit is not None:
                    await run_in_threadpool(
                        audit.record,
                        "serve",
                        sha256_bytes(data),
                        engine.audit_model,
                        error=e.audited,
                        device=device_of(data),
                    )
                return _error(422 if e.out_of_scope else 400, f"{name}: {e.reason}")
            except TimeoutError:
                _keep_until_done(request.app.state.running, work)
                log.warning("a prediction exceeded %.0f s and was answered 504", settings.request_timeout_s)
                return _error(504, f"processing took longer than {settings.request_timeout_s:g} s; try method=gradcam")
        result["input_sha256"] = sha256_bytes(data)
        if audit is not None:
            await run_in_threadpool(
                audit.record,
                "serve",
                result["input_sha256"],
                engine.audit_model,
                result,
                duration_ms=1000 * result["seconds"],
                device=device_of(data),
            )
        if fmt == "json":
            return result
        # the whole header only where it is read: the ORU's patient and order, or the order's lookup
        header = header_dataset(data) if fmt == "hl7" or orders else None  # None for a JPEG or PNG
        order = await run_in_threadpool(order_for, orders, header) if orders else None  # the RIS's (--orders)
        filed = filed_under(order, header)  # not another patient's (the ORU says so in a note)
        if fmt == "fhir":
            from pneumolens.integration.fhir import MEDIA_TYPE, observation

            obs = observation(result, *uids_of(data), filed)
            return JSONResponse(obs, media_type=MEDIA_TYPE)
        if fmt == "hl7":
            from pneumolens.integration.hl7v2 import MEDIA_TYPE as HL7_MEDIA_TYPE
            from pneumolens.integration.hl7v2 import oru_r01

            return Response(oru_r01(result, header, order=order), media_type=HL7_MEDIA_TYPE)
        if fmt == "fhir-bundle":
            from pneumolens.integration.fhir import MEDIA_TYPE, transaction

            study_uid, image_uid = uids_of(data)
            key = image_uid or result["input_sha256"]
            bundle = transaction(result, key, study_uid, image_uid, filed)
            return JSONResponse(bundle, media_type=MEDIA_TYPE)
        return result

    @app.get("/recent", include_in_schema=False)
    async def recent_page() -> FileResponse:
        return FileResponse(STATIC / "recent.html", media_type="text/html")

    @app.get("/api/v1/recent", response_model=None)
    async def recent(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict] | JSONResponse:
        """The newest rows of the audit trail (no patient identifiers are ever stored there)."""
        audit: AuditLog | None = request.app.state.audit
        if audit is None:
            return _error(404, AUDIT_OFF)
        return await run_in_threadpool(audit.rows, None, limit, True)

    @app.post("/api/v1/review", response_model=Review, responses={404: {"model": Error}, 422: {"model": Error}})
    async def review(request: Request, body: ReviewRequest):
        """Record a clinician's read of an image (``input_sha256``, as a prediction returned it) or a DICOM
        study (``study_instance_uid``) the audit trail holds a prediction for; ``GET /api/v1/agreement``
        compares the calls with these reads."""
        audit: AuditLog | None = request.app.state.audit
        if audit is None:
            return _error(404, AUDIT_OFF)
        try:
            found = await run_in_threadpool(audit.review, body.label, body.input_sha256, body.study_instance_uid)
        except LookupError as e:
            return _error(404, str(e))
        except ValueError as e:
            return _error(422, str(e))
        call = found["decision"]
        return {
            "label": body.label,
            "model_call": call,
            "probability": found["probability"],
            "agrees": call == body.label,
        }

    @app.get("/api/v1/agreement", response_model=None)
    async def agreement(
        request: Request, since: str | None = None, by: Literal["model", "device"] = "model"
    ) -> dict | JSONResponse:
        """The model's calls against the clinicians' reads recorded since ``since`` (an age such as 30d, or
        an ISO date; all without it): per model (or per DICOM device, ``by=device``), counts and rates
        with Wilson 95% intervals (``pneumolens audit --agreement``)."""
        audit: AuditLog | None = request.app.state.audit
        if audit is None:
            return _error(404, AUDIT_OFF)
        try:
            start = parse_since(since, "since") if since else None
        except ValueError as e:
            return _error(422, str(e))
        found = await run_in_threadpool(agreement_in, audit, start)
        return {"rows": found.table(by), "by": by, "unmatched_reviews": found.unmatched, "notice": NOTICE}

    @app.get("/api/v1/drift", response_model=None)
    async def drift(
        request: Request,
        recent: str = "7d",
        since: str | None = None,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.01,
        device: str | None = None,
    ) -> dict | JSONResponse:
        """The predictions since ``recent`` (an age such as 7d, or an ISO date) against those before it (from
        ``since`` on): refusals, calls, probabilities, flags and the films' measures, each tested
        (``pneumolens audit --drift``); ``device``: only the inputs from that DICOM device.
        ``drift`` is null, with a ``reason``, when either window holds too few films to compare."""
        audit: AuditLog | None = request.app.state.audit
        if audit is None:
            return _error(404, AUDIT_OFF)
        try:
            cut = parse_since(recent, "recent")
            start = parse_since(since, "since") if since else None
            report = await run_in_threadpool(drift_in, audit, cut, start, alpha, device)
        except TooFewFilms as e:
            return {"drift": None, "reason": str(e)}
        except ValueError as e:
            return _error(422, str(e))
        return report.as_dict()

    return app
