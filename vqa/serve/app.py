"""The FastAPI app of ``vqa serve``: the page, the JSON API and its one-sentence errors.

Routes:

- ``GET /``: the page (``static/index.html``, with its script and style under ``/static``);
  it needs nothing from the network, and a Content-Security-Policy lets it run only its own
  script.
- ``POST /api/answer``: multipart form with an image (``image``, a file, or ``image_id``,
  one of ``GET /api/images``) and one or more ``question`` fields; ``top_k`` (default 5) and
  ``heatmap`` (attention runs: the maps drawn over the image, as data: URIs: heatmaps over a
  grid, boxes over detector regions). A run on detector regions also needs the photo's
  ``regions`` (a file: a bottom-up-attention TSV, or one .npz or HDF5 file) and, when the file
  holds several images and the image's name has no id, ``region_id``. The answer holds
  ``results``, one object per question in the shape of ``vqa predict --json``.
- ``GET /api/health``: the run, the limits, the batcher's and the cache's figures.
- ``GET /api/images`` (``offset``, ``limit``) and ``GET /api/images/{id}``: the run's images.
- ``GET /docs``: the OpenAPI docs, Swagger UI's script and style served from here (the
  fastapi-offline package ships them, under ``/static-offline-docs``), so they work offline.

Every bad request is answered ``{"detail": "<one sentence>"}`` with a 4xx status, and an
unexpected failure with a 500 and a sentence (the traceback goes to the server's log only).
Model work runs on the engine's thread and image decoding in the thread pool, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vqa.serve.engine import Engine
from vqa.serve.forms import FormRoute, form_limits, parser_error
from vqa.serve.gallery import Gallery
from vqa.serve.overlay import heatmap_uris
from vqa.serve.server import StopAnswers
from vqa.serve.uploads import (ClientError, Limits, PreparedImage, body_too_large_sentence, check_questions,
                               check_regions_size, check_size, check_top_k, content_key, decode, image_size,
                               regions_from_upload)

STATIC = Path(__file__).resolve().parent / "static"
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"detail": example}}}}
          for status, text, example in [
              (400, "a run on detector regions asked without the photo's regions",
               'This run reads detector regions, ...; attach the photo\'s regions in the "regions" field ...'),
              (404, "unknown image id", "Image id '7' is not one of the run's images; GET /api/images lists them."),
              (413, "upload too large, or too many pixels", "The upload is 12.0 MB, over the 10 MB limit; ..."),
              (415, "not an image, or not a form",
               "The upload is not an image Pillow can read; upload a JPEG or PNG file."),
              (422, "bad question, field or image", "The question is empty; type a question about the image."),
              (503, "busy or shutting down", "The server is busy with other requests; wait a moment and send it again.")]}

log = logging.getLogger("vqa.serve")


def create_app(engine: Engine, gallery: Gallery | None = None, limits: Limits = Limits()) -> FastAPI:
    """The app serving ``engine``'s run; its lifespan starts and stops the engine's inference thread.

    Args:
        engine: the loaded run.
        gallery: the run's images to offer (none when None).
        limits: what one request may send.
    """
    gallery = gallery if gallery is not None else Gallery([], "no run images were listed")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.close)

    app = FastAPIOffline(title="vqa serve", lifespan=lifespan, redoc_url=None,
                  summary=f"Visual question answering with the run {engine.run_dir.name}",
                  description="Ask questions about an image: upload it, or name one of the run's images by id.")
    app.state.engine, app.state.gallery, app.state.limits = engine, gallery, limits
    app.add_middleware(PageHeaders, too_large=body_too_large_sentence(limits))
    app.add_middleware(StopAnswers)  # outermost of the two: a request cancelled by the stop is answered 503
    _error_handlers(app, limits)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health", summary="The run being served, the limits, and the server's figures")
    async def health() -> dict:
        return {"status": "ok", **engine.describe(), "images": len(gallery), "images_note": gallery.note,
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_questions": limits.max_questions, "max_question_words": limits.max_question_words},
                **engine.stats()}

    @app.get("/api/images", summary="The run's images that can be asked about by id")
    async def images(offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        return {"total": len(gallery), "offset": offset, "note": gallery.note,
                "images": [image.to_json() for image in gallery.page(offset, limit)]}

    @app.get("/api/images/{image_id}", summary="The bytes of one of the run's images", response_class=FileResponse,
             responses={404: ERRORS[404]})
    async def image_file(image_id: str) -> FileResponse:
        image = _run_image(gallery, image_id)
        return FileResponse(image.path, media_type=image.media_type)

    answers = APIRouter(route_class=FormRoute)  # the form's type, end and limits said in our words

    @answers.post("/api/answer", summary="Answer questions about an image", responses=ERRORS,
                  max_body_size=limits.max_body_bytes, form_limits=form_limits(limits))
    async def answer(
        question: Annotated[list[str] | None, Form(description="a question; repeat the field for several")] = None,
        image: Annotated[UploadFile | None, File(description="the image (JPEG, PNG, ...)")] = None,
        image_id: Annotated[str | None, Form(description="or: the id of one of the run's images")] = None,
        top_k: Annotated[int, Form(description="answers per question")] = 5,
        heatmap: Annotated[bool, Form(description="attention runs: draw the maps over the image")] = False,
        regions: Annotated[UploadFile | None, File(description="runs on detector regions: the photo's regions "
                                                               "(a TSV, or one .npz or .h5 file)")] = None,
        region_id: Annotated[int | None, Form(description="the image of a regions file of several")] = None,
    ) -> JSONResponse:
        questions = check_questions(question, limits)
        top_k = check_top_k(top_k)
        _check_regions_field(engine, regions is not None)
        prepared = found = None
        if engine.uses_image:
            prepared = await _prepared_image(engine, gallery, limits, image, image_id)
        if regions is not None:
            data = await regions.read(limits.max_upload_bytes + 1)
            check_regions_size(data, limits)
            found = await run_in_threadpool(regions_from_upload, data, image_id or prepared.label, region_id,
                                            engine.predictor.feature_dim, regions.filename)
        job = engine.submit(questions, top_k, prepared, with_attention=engine.has_attention, regions=found)
        answers = await asyncio.wrap_future(job.future)
        body = {"image": None, "results": [item.to_json() for item in answers]}
        if prepared is not None:
            body["image"] = {"sha256": prepared.key, "id": image_id if image is None else None,
                             "name": prepared.label, "width": prepared.width, "height": prepared.height,
                             "cached": job.cached}
        if engine.has_attention:
            body["map_names"] = engine.map_names
            if heatmap and prepared is not None:
                body["heatmaps"] = await run_in_threadpool(heatmap_uris, prepared.data, prepared.width,
                                                           prepared.height, answers, engine.map_names)
        return JSONResponse(body)

    app.include_router(answers)
    return app


def _check_regions_field(engine: Engine, sent: bool) -> None:
    """A run on detector regions needs the photo's regions file; any other run takes none."""
    if engine.reads_regions and not sent:
        raise ClientError(400, "This run reads detector regions, which this server cannot make from a photo; attach "
                               'the photo\'s regions in the "regions" field (a bottom-up-attention TSV, or one .npz '
                               "or .h5 file).")
    if sent and not engine.reads_regions:
        reads = f"{engine.predictor.run.features} image features" if engine.uses_image else "no image"
        raise ClientError(422, f'This run reads {reads}, not detector regions; leave out the "regions" field.')


def _run_image(gallery: Gallery, image_id: str):
    image = gallery.get(image_id.strip())
    if image is None:
        shown = image_id if len(image_id) <= 40 else image_id[:40] + "..."
        raise ClientError(404, f"Image id {shown!r} is not one of the run's images; GET /api/images lists them, "
                               "or upload the image as a file instead.")
    if not image.path.is_file():
        raise ClientError(404, f"Image {image.id} is no longer on the server's disk; upload it as a file instead.")
    return image


async def _prepared_image(engine: Engine, gallery: Gallery, limits: Limits, upload: UploadFile | None,
                          image_id: str | None) -> PreparedImage:
    """The request's image, read, checked and decoded (in the thread pool), or taken from the cache."""
    if upload is not None and image_id:
        raise ClientError(422, 'Send either an image file or an image_id, not both.')
    if upload is not None:
        data = await upload.read(limits.max_upload_bytes + 1)
        label = (upload.filename or "upload")[:200]
    elif image_id:
        run_image = _run_image(gallery, image_id)
        data, label = await run_in_threadpool(run_image.path.read_bytes), run_image.id
    else:
        raise ClientError(422, 'Send an image: upload a file in the "image" field, or name one of the run\'s images '
                               'in "image_id" (GET /api/images lists them).')
    check_size(data, limits)
    return await run_in_threadpool(_decoded, engine, data, label, limits)


def _decoded(engine: Engine, data: bytes, label: str, limits: Limits) -> PreparedImage:
    key = content_key(data)
    cached = engine.cache.peek(key)
    if cached is not None:  # the same bytes passed every check before
        return PreparedImage(key, data, label, None, cached.width, cached.height)
    width, height = image_size(data, limits)
    if engine.reads_regions:  # no backbone: the photo is only drawn on, decoded when it is
        return PreparedImage(key, data, label, None, width, height)
    return PreparedImage(key, data, label, decode(data, engine.image_size), width, height)


def _error_handlers(app: FastAPI, limits: Limits) -> None:
    """Every error as ``{"detail": one sentence}``."""

    @app.exception_handler(ClientError)
    async def client_error(request: Request, error: ClientError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problem = error.errors()[0] if error.errors() else {}
        where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path")]
        field = where[0] if where else "the request"
        message = str(problem.get("msg", "is not valid")).rstrip(".")
        message = message[0].lower() + message[1:] if message else "is not valid"
        return JSONResponse({"detail": f"Field {field!r}: {message}; see /docs for the fields this request takes."},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        parser = parser_error(error.detail, limits) if isinstance(error.detail, str) else None
        if error.status_code == 400 and parser is not None:
            return JSONResponse({"detail": parser.detail}, status_code=parser.status)
        sentences = {404: f"There is nothing at {request.url.path}; the page is at / and the API under /api "
                          "(see /docs).",
                     405: f"{request.method} is not allowed on {request.url.path}; see /docs for the methods.",
                     413: body_too_large_sentence(limits)}
        detail = error.detail if isinstance(error.detail, str) and error.detail.endswith(".") else None
        return JSONResponse({"detail": detail or sentences.get(error.status_code, f"{error.detail}.")},
                            status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": f"The server failed to answer ({type(error).__name__}); the details are in "
                                       "its log, so try again, and report the log if it keeps failing."},
                            status_code=500)


class PageHeaders:
    """Adds ``nosniff`` to every response, and to the page and its files a policy allowing only their own script.

    Also turns the plain-text 413 that the body limit sends (before any handler runs) into the JSON sentence.
    """

    def __init__(self, app, too_large: str = "The request is too large; send a smaller image."):
        self.app = app
        self.too_large = too_large

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")
        replaced = False

        async def send_with_headers(message):
            nonlocal replaced
            if replaced:  # the plain-text body of a replaced response
                return
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                if message["status"] == 413 and not any(name.lower() == b"content-type" and b"json" in value
                                                        for name, value in headers):
                    replaced = True
                    body = json.dumps({"detail": self.too_large}).encode()
                    await send({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"x-content-type-options", b"nosniff")]})
                    await send({"type": "http.response.body", "body": body})
                    return
                if page:
                    headers += [(b"content-security-policy", PAGE_POLICY.encode()),
                                (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
