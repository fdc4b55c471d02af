"""`visionfit serve` through FastAPI's TestClient: the answers are predict's, every endpoint, and
every refusal of the safe defaults (type by the bytes, truncated files, decompression bombs, too
many files, a full queue, the API key, the headers)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from serve_support import CLASSES, image_bytes, write_checkpoint
from visionfit.cli import main
from visionfit.inference import load_for_inference
from visionfit.serve.app import create_app
from visionfit.serve.limits import ServeLimits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("serve") / "model.safetensors")


def serve(checkpoint, limits=None, **options):
    model = load_for_inference(checkpoint, device="cpu", precision="fp32", model_code="refuse")
    return model, create_app(model, limits, **options)


@pytest.fixture
def client(checkpoint):
    _, app = serve(checkpoint)
    with TestClient(app) as test_client:
        yield test_client


def upload(*files):
    return [("files", (name, data, kind)) for name, data, kind in files]


def test_a_served_answer_is_what_predict_json_prints(client, checkpoint, tmp_path, capsys):
    names = ["wide.png", "photo.jpg", "small.bmp"]
    for index, (name, size) in enumerate(zip(names, [(90, 20), (64, 48), (12, 12)], strict=True)):
        (tmp_path / name).write_bytes(
            image_bytes(Image.registered_extensions()["." + name.split(".")[1]], size, index)
        )
    assert (
        main(
            [
                "predict",
                str(checkpoint),
                *[str(tmp_path / name) for name in names],
                "--json",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    response = client.post(
        "/predict", files=upload(*[(name, (tmp_path / name).read_bytes(), "image/x") for name in names])
    )
    assert response.status_code == 200
    served = response.json()
    assert [record["file"] for record in served] == names  # in order, named as uploaded
    for expected, answer in zip(printed, served, strict=True):
        assert answer["class"] == expected["class"]
        assert [entry["class"] for entry in answer["top"]] == [entry["class"] for entry in expected["top"]]
        for mine, theirs in zip(answer["top"], expected["top"], strict=True):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-6)

    raw = client.post(
        "/predict?top_k=1", content=(tmp_path / "photo.jpg").read_bytes()
    )  # one image as the body
    assert raw.status_code == 200
    (record,) = raw.json()
    assert record["file"] == "-" and record["class"] == printed[1]["class"] and len(record["top"]) == 1
    assert record["probability"] == pytest.approx(printed[1]["probability"], abs=1e-6)


def test_an_onnx_export_is_served_as_predict_runs_it(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    exported = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(exported)]) == 0
    picture = tmp_path / "photo.png"
    picture.write_bytes(image_bytes("PNG", (50, 40), 3))
    capsys.readouterr()
    assert main(["predict", str(exported), str(picture), "--json", "--top-k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    _, app = serve(exported)
    with TestClient(app) as client:
        served = client.post("/predict?top_k=3", content=picture.read_bytes()).json()[0]
        info = client.get("/info").json()
    assert [entry["class"] for entry in served["top"]] == [entry["class"] for entry in printed["top"]]
    assert served["probability"] == pytest.approx(printed["probability"], abs=1e-6)
    assert info["classes"] == CLASSES


def test_info_health_page_and_api_docs(client, checkpoint):
    info = client.get("/info").json()
    assert info["classes"] == CLASSES and info["input_size"] == 32
    assert info["model"]["name"] == "cifar10-quick" and info["test_accuracy"] == 0.5
    assert info["preprocessing"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert info["checkpoint"]["sha256"] == json.loads(checkpoint.with_suffix(".json").read_text())["sha256"]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["visionfit_version"])
    assert client.get("/health").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert client.get("/" + asset).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/info", "/health"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert "swagger-ui" in client.get("/docs").text


def test_the_type_is_decided_by_the_bytes_not_the_name_or_content_type(client):
    png_called_text = client.post("/predict", files=upload(("notes.txt", image_bytes("PNG"), "text/plain")))
    assert png_called_text.status_code == 200 and png_called_text.json()[0]["file"] == "notes.txt"
    text_called_jpeg = client.post(
        "/predict", files=upload(("cat.jpg", b"just some words\n" * 20, "image/jpeg"))
    )
    assert text_called_jpeg.status_code == 415
    assert text_called_jpeg.json() == {
        "error": "cat.jpg: not an image in a format visionfit reads (BMP, GIF, JPEG, PNG, PPM, TIFF, WEBP)",
        "file": "cat.jpg",
    }
    for pillow_only in ("TGA", "ICO", "PCX"):  # Pillow reads these; predict does not
        response = client.post(
            "/predict", files=upload(("x.png", image_bytes(pillow_only, (16, 16)), "image/png"))
        )
        assert response.status_code == 415, pillow_only
    assert client.post("/predict", content=b"").status_code == 422  # no image at all


def test_a_truncated_image_is_422(client):
    jpeg = image_bytes("JPEG", (64, 64))
    for name, data in [("cut.jpg", jpeg[: len(jpeg) // 2]), ("cut.png", image_bytes("PNG", (64, 64))[:300])]:
        response = client.post("/predict", files=upload((name, data, "image/jpeg")))
        assert response.status_code == 422, name
        assert response.json()["error"].startswith(f"{name}: not a readable image")
    # one bad file refuses the request: no half answers
    mixed = client.post(
        "/predict",
        files=upload(("ok.png", image_bytes(), "image/png"), ("cut.jpg", jpeg[: len(jpeg) // 2], "x")),
    )
    assert mixed.status_code == 422 and mixed.json()["file"] == "cut.jpg"


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
    data = bytearray(image_bytes("PNG", (8, 8)))
    header = struct.pack(">II", width, height) + bytes(data[24:29])  # keep depth, colour type, ...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, then our refusal
def test_a_decompression_bomb_is_refused_from_its_header_and_never_decoded(client, monkeypatch):
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or original(image)
    )
    limit = Image.MAX_IMAGE_PIXELS
    for width, height in [(100_000, 100_000), (limit // 10_000 + 1_000, 10_000)]:  # over 2x, and just over 1x
        response = client.post(
            "/predict", files=upload(("bomb.png", png_claiming(width, height), "image/png"))
        )
        assert response.status_code == 413, (width, height)
        assert "too many pixels" in response.json()["error"]
    assert decoded == []
    assert (
        client.post("/predict", files=upload(("fine.png", png_claiming(8, 8), "image/png"))).status_code
        == 200
    )
    assert decoded and set(decoded) == {(8, 8)}  # the check lets ordinary images through to the decoder


def test_too_many_files_and_too_large_a_body_are_413(checkpoint):
    _, app = serve(checkpoint, ServeLimits(max_files=2, max_body_bytes=50_000))
    with TestClient(app) as client:
        three = upload(*[(f"{index}.png", image_bytes(seed=index), "image/png") for index in range(3)])
        response = client.post("/predict", files=three)
        assert response.status_code == 413 and "more than 2 images" in response.json()["error"]
        assert client.post("/predict", files=three[:2]).status_code == 200
        big = image_bytes("PNG", (200, 200))  # random pixels: about 120 kB
        assert len(big) > 50_000
        assert client.post("/predict", content=big).status_code == 413
        streamed = client.post("/predict", content=iter([big[:40_000], big[40_000:]]))  # no Content-Length
        assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]


class BlockingModel:
    """Wraps the model's probabilities so a test decides when the inference thread may go on, and
    records every batch it was given and on which thread."""

    def __init__(self, model):
        self.probabilities = model.probabilities
        self.release = threading.Event()
        self.batches: list[tuple[int, str]] = []
        model.probabilities = self

    def __call__(self, batch):
        self.batches.append((len(batch), threading.current_thread().name))
        if len(self.batches) > 1:  # the warm-up at start passes
            assert self.release.wait(30)
        return self.probabilities(batch)


def post_in_thread(client, results, data):
    thread = threading.Thread(target=lambda: results.append(client.post("/predict", content=data)))
    thread.start()
    return thread


def wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_is_503_with_retry_after_and_the_event_loop_never_waits_for_the_model(checkpoint):
    model = load_for_inference(checkpoint, device="cpu", precision="fp32", model_code="refuse")
    blocking = BlockingModel(model)
    app = create_app(model, ServeLimits(max_queue=2, max_wait_ms=0))
    service = app.app.state.service
    with TestClient(app) as client:
        results = []
        threads = [post_in_thread(client, results, image_bytes(seed=index)) for index in range(2)]
        wait_for(lambda: service.in_flight == 2 and len(blocking.batches) >= 2)
        refused = client.post("/predict", content=image_bytes())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "busy" in refused.json()["error"]
        assert client.get("/health").status_code == 200  # while the model is busy
        blocking.release.set()
        for thread in threads:
            thread.join(30)
        assert [response.status_code for response in results] == [200, 200]
        assert service.in_flight == 0
        assert client.post("/predict", content=image_bytes()).status_code == 200
    assert {thread for _, thread in blocking.batches} == {"visionfit-inference"}


def test_requests_arriving_within_max_wait_share_one_model_batch(checkpoint):
    model = load_for_inference(checkpoint, device="cpu", precision="fp32", model_code="refuse")
    blocking = BlockingModel(model)
    blocking.release.set()
    app = create_app(model, ServeLimits(max_wait_ms=1000, max_batch=8))
    with TestClient(app) as client:
        results, threads = [], []
        for index in range(4):  # 50 ms apart: each alone would be classified long before the next
            threads.append(post_in_thread(client, results, image_bytes(seed=index)))
            time.sleep(0.05)
        for thread in threads:
            thread.join(30)
    assert [response.status_code for response in results] == [200] * 4
    assert [size for size, _ in blocking.batches[1:]] == [4]  # after the warm-up: one batch of four


def test_the_api_key_guards_predict_and_info(checkpoint):
    _, app = serve(checkpoint, api_key="s3cret")
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            for response in (
                client.post("/predict", content=image_bytes(), headers=headers),
                client.get("/info", headers=headers),
            ):
                assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
                assert "API key" in response.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/predict", content=image_bytes(), headers=good).status_code == 200
        assert client.get("/info", headers=good).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_every_response_says_nosniff_and_allows_only_the_pages_own_files(client):
    responses = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/info"),
        client.get("/no/such/page"),
        client.post("/predict", content=b"not an image"),
    ]
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "http" not in policy
        assert "access-control-allow-origin" not in response.headers
    docs = client.get("/docs")
    inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    assert inline  # Swagger UI's one inline script is allowed by its hash, nothing else inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in docs.headers["Content-Security-Policy"]


def test_no_cors_headers_unless_an_origin_is_named(client, checkpoint):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/predict", headers=preflight).headers
    _, app = serve(checkpoint, cors_origins=("https://example.org",))
    with TestClient(app) as cors_client:
        allowed = cors_client.options("/predict", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = cors_client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_page_puts_no_text_into_html_and_runs_no_inline_script():
    from visionfit.serve.app import STATIC

    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []  # every script is a file
    assert not re.search(r"\son\w+=", page) and "style=" not in page  # no inline handlers or styles
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from another site


def test_batcher_fills_batches_up_to_max_batch_on_its_own_thread():
    import asyncio

    import torch

    from visionfit.serve.batching import Batcher

    seen = []

    def classify(batch):
        seen.append((len(batch), threading.current_thread().name))
        return batch.float().flatten(1).mean(1, keepdim=True)

    async def scenario():
        batcher = Batcher(classify, max_batch=3, max_wait_ms=200)
        batcher.start()
        pictures = [torch.full((3, 2, 2), value, dtype=torch.uint8) for value in range(5)]
        rows = await batcher.submit(pictures)
        await asyncio.to_thread(batcher.close)
        return rows

    rows = asyncio.run(scenario())
    assert [float(row) for row in rows] == [0, 1, 2, 3, 4]  # each picture gets its own row, in order
    assert seen == [(3, "visionfit-inference"), (2, "visionfit-inference")]
