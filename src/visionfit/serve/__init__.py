"""`visionfit serve`: a model behind HTTP, and a page to try it.

`app` (the FastAPI app and its routes), `batching` (requests' images share model batches on one
inference thread), `limits` (what an upload may be, checked by its bytes before it is decoded),
`security` (headers, API key), `server` (uvicorn, graceful stop), `static/` (the page: HTML, JS
and CSS shipped in the package; nothing is loaded from elsewhere). Needs the `serve` extra.
"""
