"""The HTTP service: `create_app(model)` makes the FastAPI app that `visionfit serve` runs.

    POST /predict   images (multipart files, or one image as the body) → `predict --json`'s records
    POST /explain   the same, each record with the picture and its Grad-CAM map as a PNG data URL
    GET  /info      the model: name, classes, input size, preprocessing, hash, test accuracy
    GET  /health    {"status": "ok"} while the service runs
    GET  /          a page to try the model; /docs and /openapi.json: the API, as FastAPI describes it

A request goes: API key → admission (at most `max_queue` requests at once, else 503) → body, at
most `max_body_bytes` → each file identified by its bytes and decoded on a small thread pool,
exactly as `predict` decodes a file → the batcher's model call → top-k → the records `predict
--json` prints, in the order of the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException  # also what Starlette's form parser and body limit raise

from visionfit import __version__
from visionfit.inference.model import InferenceModel
from visionfit.models.record import ModelRecord
from visionfit.prediction import Prediction, Predictor, prediction_record
from visionfit.serve.batching import Batcher
from visionfit.serve.explanations import ServedExplanations
from visionfit.serve.limits import MEGABYTE, Refused, ServeLimits, decode_upload
from visionfit.serve.security import SecurityHeaders, check_api_key, docs_page

STATIC = Path(__file__).parent / "static"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
RETRY_AFTER_SECONDS = 1
UPLOAD_BODY = {
    "requestBody": {
        "description": "Images as multipart form data (any field name, e.g. `files`), or one image "
        "as the whole body. The type is decided by the bytes: JPEG, PNG, BMP, WebP, GIF, TIFF, PPM.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class Service:
    """What the routes share: the model, its batcher and decoding threads, the limits, the key."""

    def __init__(self, model: InferenceModel, limits: ServeLimits, api_key: str | None) -> None:
        self.model = model
        self.predictor = Predictor(model)
        self.limits = limits
        self.api_key = api_key
        self.batcher = Batcher(
            model.probabilities, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms
        )
        self.decoders: ThreadPoolExecutor | None = None
        self.explanations = ServedExplanations(model)
        self.in_flight = 0  # requests admitted to /predict and /explain; only the event loop changes it

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """One request's place in the queue: refused with 503 when --max-queue are being served."""
        most = self.limits.max_queue
        if self.in_flight >= most:
            raise Refused(503, f"busy: {most} requests are being served (--max-queue); retry")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def running(self, _: FastAPI) -> AsyncIterator[None]:
        self.decoders = ThreadPoolExecutor(self.limits.decode_threads, thread_name_prefix="visionfit-decode")
        self.batcher.start()
        size = self.model.preprocess.input_size
        await self.batcher.submit([torch.zeros(3, size, size, dtype=torch.uint8)])  # warm-up
        try:
            yield
        finally:
            # uvicorn has finished the requests in flight by now; the batcher finishes its queue.
            await asyncio.to_thread(self.batcher.close)
            self.decoders.shutdown(wait=True)

    async def classify(self, uploads: list[tuple[str, bytes]], top_k: int) -> list[dict[str, Any]]:
        decoded = await self.decode(uploads)
        rows = await self.batcher.submit(decoded)
        tops = self.predictor.answers(torch.stack(rows), top_k)  # a multi-label model: label sets
        multilabel = self.predictor.model.multilabel
        return [
            prediction_record(Prediction(name, top, multilabel=multilabel))
            for (name, _), top in zip(uploads, tops, strict=True)
        ]

    async def decode(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        """The uploads as the model's pixels, decoded on the decoding threads; the first refused
        file, in the request's order, answers for all."""
        loop = asyncio.get_running_loop()
        preprocess = self.model.preprocess
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(self.decoders, decode_upload, data, name, preprocess)
                for name, data in uploads
            ),
            return_exceptions=True,
        )
        for result in decoded:
            if isinstance(result, BaseException):
                raise result
        return decoded  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        metadata = self.model.metadata
        record = ModelRecord.from_dict(metadata["model"]) if "model" in metadata else None
        source = self.model.source
        digest = metadata.get("sha256")
        if digest is None and source is not None and source.is_file():
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        return {
            "model": {
                "name": record.display_name if record else (source.stem if source else "model"),
                "args": record.args if record else {},
                "num_classes": len(self.model.classes),
            },
            "classes": self.model.classes,
            "input_size": self.model.preprocess.input_size,
            "preprocessing": self.model.preprocess.to_dict(),
            "test_time_augmentation": {"flip": self.model.flip, "shift": self.model.shift},
            "checkpoint": {
                "file": source.name if source else None,
                "sha256": digest,
                "epoch": metadata.get("epoch"),
            },
            "test_accuracy": self.model.test_accuracy,
            "runtime": {"device": str(self.model.runtime.device), "precision": self.model.runtime.precision},
            "limits": self.limits.describe(),
            "visionfit_version": __version__,
        }


router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


@router.post("/predict", openapi_extra=UPLOAD_BODY, summary="Classify images")
async def predict(
    request: Request, top_k: int = Query(3, ge=1, description="classes per image, most probable first")
) -> JSONResponse:
    """The records `visionfit predict --json` prints, one per image, in order."""
    service = _service(request)
    check_api_key(request, service.api_key)
    with service.admitted():
        uploads = await read_uploads(request, service.limits)
        return JSONResponse(await service.classify(uploads, top_k))


@router.post("/explain", openapi_extra=UPLOAD_BODY, summary="Classify images and show where the model looked")
async def explain(
    request: Request,
    top_k: int = Query(3, ge=1, description="classes per image, most probable first"),
    class_name: str | None = Query(
        None, alias="class", description="explain this class (default: the predicted one)"
    ),
) -> JSONResponse:
    """/predict's records, each with `explained` (the class its map shows) and `overlay` (a PNG
    data URL: the picture with its Grad-CAM map). Same limits and key as /predict; 501 for a model
    that cannot be explained (an ONNX export: explanations need the checkpoint)."""
    service = _service(request)
    check_api_key(request, service.api_key)
    with service.admitted():
        uploads = await read_uploads(request, service.limits)
        pixels = await service.decode(uploads)
        names = [name for name, _ in uploads]
        return JSONResponse(await service.explanations.answer(names, pixels, top_k, class_name))


@router.get("/info", summary="The model")
async def info(request: Request) -> JSONResponse:
    service = _service(request)
    check_api_key(request, service.api_key)
    return JSONResponse(service.info())


@router.get("/health", summary="Whether the service runs")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def read_uploads(request: Request, limits: ServeLimits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded file, or ("-", body) for a body that is one image (as predict
    names stdin). The body limit (FastAPI's `max_body_size`) stops reading at `max_body_bytes`."""
    try:
        return await _read_uploads(request, limits)
    except HTTPException as error:
        if error.status_code == 413:
            limit = limits.max_body_bytes / MEGABYTE
            raise Refused(413, f"request body larger than {limit:g} MB (--max-body-mb)") from None
        # Starlette stops parsing at the first file over max_files and says so in its message.
        if error.status_code == 400 and str(error.detail).startswith("Too many files"):
            raise Refused(413, f"more than {limits.max_files} images in one request (--max-files)") from None
        raise


async def _read_uploads(request: Request, limits: ServeLimits) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=limits.max_files, max_fields=16)
        try:
            uploads = [
                (value.filename or "-", await value.read())
                for _, value in form.multi_items()
                if not isinstance(value, str)
            ]
        finally:
            await form.close()
    else:
        body = await request.body()
        uploads = [("-", body)] if body else []
    if not uploads:
        raise Refused(
            422, "no image in the request: send files as multipart form data, or one image as the body"
        )
    return uploads


def _refused(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Refused)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status == 503 else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error.record(), status_code=error.status, headers=headers)


def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def _invalid(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
    return JSONResponse({"error": problems}, status_code=422)


def create_app(
    model: InferenceModel,
    limits: ServeLimits | None = None,
    *,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] = (),
) -> SecurityHeaders:
    """The service for `model` as an ASGI app (the FastAPI app is its `.app`), ready for uvicorn
    or FastAPI's TestClient. `api_key`: required as `Authorization: Bearer KEY` on /predict and
    /info. `cors_origins`: web origins allowed to call the API from their pages (none by default)."""
    limits = limits or ServeLimits()
    service = Service(model, limits, api_key)
    app = FastAPI(
        title="visionfit",
        version=__version__,
        description="Classify images with a visionfit model.",
        lifespan=service.running,
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
        max_body_size=limits.max_body_bytes,
    )
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    html, docs_policy = docs_page(OPENAPI_PATH, "visionfit API")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html)

    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return SecurityHeaders(app, DOCS_PATH, docs_policy)
