"""The generation server: the native `/v1` job API and the Automatic1111-compatible `/sdapi/v1`.

`create_app(engine, ...)` builds the FastAPI application around an already-loaded engine, so the model
loads once, before the first request. No stack trace reaches a client: user errors are 4xx with a
`detail` saying what to change, anything else is a 500 with a generic message (and a log line).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
from dataclasses import asdict, dataclass

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import __version__
from ..engine.request import GenerationRequest
from ..errors import InvalidRequest, ModelUnavailable, SceneDiffusionError, UnsupportedMode
from ..images import open_image
from . import schemas
from .auth import require_token
from .jobs import Job, JobQueue, QueueFull, ShuttingDown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for. Violations are answered 4xx naming the bound."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_count: int = 8
    max_batch: int = 16
    max_body_bytes: int = 64 << 20
    max_queue: int = 16


def decode_image(data: str, role: str, mode: str = "RGB"):
    """A base64 image from a request (a `data:image/png;base64,` prefix is accepted)."""
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{role} is empty")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{role} is not valid base64") from None
    return open_image(raw, role, mode=mode)


def check_limits(request: GenerationRequest, limits: Limits) -> None:
    for name, value, bound in (
        ("width", request.width, limits.max_width),
        ("height", request.height, limits.max_height),
        ("steps", request.steps, limits.max_steps),
        ("count", request.count, limits.max_count),
        ("batch (images per list)", request.batch_size, limits.max_batch),
    ):
        if value > bound:
            raise InvalidRequest(f"{name} {value} is over this server's limit of {bound}")


def encode_png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, before they are read whole."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = JSONResponse({"detail": f"request body over this server's limit of {self.max_bytes} bytes"},
                                 status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _BodyTooLarge:
            await too_large(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(engine, *, token: str | None = None, limits: Limits | None = None, queue: JobQueue | None = None
               ) -> FastAPI:
    limits = limits or Limits()
    queue = queue or JobQueue(engine, max_queue=limits.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(
        title="Scene Diffusion",
        version=__version__,
        description="Diffusion jobs for Blender scenes: the native /v1 API and an Automatic1111-compatible "
                    "/sdapi/v1. Authenticate with `Authorization: Bearer <token>` when the server has one.",
        lifespan=lifespan,
    )
    app.state.engine, app.state.queue, app.state.limits = engine, queue, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    auth = [Depends(require_token(token))]

    @app.exception_handler(InvalidRequest)
    @app.exception_handler(UnsupportedMode)
    @app.exception_handler(ModelUnavailable)
    async def user_error(request: Request, exc: SceneDiffusionError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, exc: ShuttingDown):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request body"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal server error; the server log has the details"}, status_code=500)

    def to_request(body: schemas.JobIn) -> GenerationRequest:
        if body.model not in (None, "", engine.model_id):
            raise InvalidRequest(f"unknown model '{body.model}': this server serves '{engine.model_id}' "
                                 "(GET /v1/models)")
        images = {
            name: tuple(decode_image(data, f"{name}[{k}]", mode) for k, data in enumerate(getattr(body, name)))
            for name, mode in (("init_images", "RGB"), ("masks", "L"), ("depths", "L"))
        }
        request = GenerationRequest(
            prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width, height=body.height,
            steps=body.steps, guidance=body.guidance, seed=None if body.seed in (None, -1) else body.seed,
            count=body.count, strength=body.strength, sampler=body.sampler, seamless=body.seamless,
            controlnet_scale=body.controlnet_scale, **images,
        )
        return validated(request)

    def validated(request: GenerationRequest) -> GenerationRequest:
        from ..engine.samplers import canonical

        check_limits(request, limits)
        request.validate()
        canonical(request.sampler)
        if request.mode not in engine.modes():
            raise UnsupportedMode(f"model '{engine.model_id}' cannot do {request.mode}; it can do: "
                                  f"{', '.join(engine.modes())}")
        return request

    app.state.validated = validated

    def find(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job '{job_id}' (finished jobs are forgotten after "
                                     f"{queue.max_records} newer ones)")
        return job

    def describe(job: Job) -> schemas.JobOut:
        preview = job.preview
        return schemas.JobOut(
            id=job.id, state=job.state, mode=job.request.mode, step=job.step, total=job.total,
            queue_position=queue.position(job), preview=encode_png_b64(preview) if preview is not None else None,
            error=job.error, images=len(job.images), seeds=job.seeds, expired=job.expired,
        )

    @app.post("/v1/jobs", status_code=202, response_model=schemas.JobAccepted, dependencies=auth,
              responses={422: {"model": schemas.Error}, 429: {"model": schemas.Error}})
    def submit(body: schemas.JobIn) -> schemas.JobAccepted:
        """Queue a job. Poll GET /v1/jobs/{id} until its state is done, failed or cancelled."""
        job = queue.submit(to_request(body))
        return schemas.JobAccepted(id=job.id, state=job.state, queue_position=queue.position(job))

    @app.get("/v1/jobs/{job_id}", response_model=schemas.JobOut, dependencies=auth,
             responses={404: {"model": schemas.Error}})
    def status(job_id: str, wait: float = Query(0, ge=0, le=30, description="long poll: seconds to wait for "
                                                "a step after `after_step` or the end of the job"),
               after_step: int = 0) -> schemas.JobOut:
        job = find(job_id)
        if wait:
            queue.wait_for_change(job, after_step, wait)
        return describe(job)

    @app.get("/v1/jobs/{job_id}/images/{index}", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"model": schemas.Error},
                        409: {"model": schemas.Error}, 410: {"model": schemas.Error}})
    def image(job_id: str, index: int) -> Response:
        """A result PNG, with its generation parameters in its text chunks."""
        job = find(job_id)
        if job.expired:
            raise HTTPException(410, f"the results of job '{job_id}' were dropped to keep within the server's "
                                     f"bounds ({queue.max_results} jobs, {queue.max_result_bytes >> 20} MiB): "
                                     "fetch results when the job is done")
        if job.state != "done":
            raise HTTPException(409, f"job '{job_id}' is {job.state}" + (f": {job.error}" if job.error else ""))
        if not 0 <= index < len(job.images):
            raise HTTPException(404, f"job '{job_id}' has images 0..{len(job.images) - 1}, not {index}")
        return Response(job.images[index], media_type="image/png")

    @app.delete("/v1/jobs/{job_id}", response_model=schemas.JobOut, dependencies=auth)
    def cancel(job_id: str) -> schemas.JobOut:
        """Cancel a queued or running job (a running one stops within one step). Finished jobs stay as they are."""
        job = find(job_id)
        if job.state not in ("done", "failed", "cancelled"):
            queue.cancel(job)
        return describe(job)

    @app.get("/v1/health", response_model=schemas.Health, dependencies=auth)
    def health() -> schemas.Health:
        info = engine.info()
        return schemas.Health(version=__version__, model=engine.model_id, family=info["family"],
                              device=info["device"], dtype=info["dtype"], modes=engine.modes(),
                              queued=queue.queued(), limits=asdict(limits))

    @app.get("/v1/models", response_model=list[schemas.ModelInfo], dependencies=auth)
    def list_models() -> list[schemas.ModelInfo]:
        return [schemas.ModelInfo(id=engine.model_id, family=engine.info()["family"], modes=engine.modes())]

    from .a1111 import create_router

    app.include_router(create_router(engine, queue, validated), dependencies=auth)
    return app
