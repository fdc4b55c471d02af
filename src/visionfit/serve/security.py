"""Headers every response carries, and the API key check.

The page is the only HTML the service makes, and it loads nothing but its own files: the
Content-Security-Policy says so (no inline script, no other origin), `nosniff` stops a browser
from running an upload or an error message as script, and no CORS header is sent unless the
operator names an origin. Swagger UI at /docs is FastAPI's and loads from its CDN with one inline
script; that page alone gets a policy that allows exactly those.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionfit.serve.limits import Refused

PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SWAGGER_ORIGIN = "https://cdn.jsdelivr.net"
SWAGGER_FAVICON_ORIGIN = "https://fastapi.tiangolo.com"


def docs_page(openapi_url: str, title: str) -> tuple[str, str]:
    """FastAPI's Swagger UI page and the policy that lets exactly it run: its CDN files and the
    one inline script, by hash."""
    html = get_swagger_ui_html(openapi_url=openapi_url, title=title).body.decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    )
    policy = (
        f"default-src 'self'; script-src {SWAGGER_ORIGIN} {hashes}; "
        f"style-src {SWAGGER_ORIGIN} 'unsafe-inline'; img-src 'self' data: {SWAGGER_FAVICON_ORIGIN}; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return html, policy


class SecurityHeaders:
    """ASGI middleware around the whole app, so that every response has the headers — also the
    413 of the body limit and a 500."""

    def __init__(self, app: ASGIApp, docs_path: str, docs_policy: str) -> None:
        self.app = app
        self.docs_path = docs_path
        self.docs_policy = docs_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.docs_policy if scope["path"] == self.docs_path else PAGE_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Content-Security-Policy"] = policy
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def check_api_key(request: Request, api_key: str | None) -> None:
    """Refuse (401) a request without `Authorization: Bearer KEY` when the service has a key."""
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
        raise Refused(401, "this service needs an API key: send the header Authorization: Bearer KEY")
