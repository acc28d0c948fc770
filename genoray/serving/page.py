"""The query page of ``genoray serve``: one HTML file, one script and one style sheet shipped in
the package (``genoray/serving/page/``), served by the API app itself at ``GET /ui``.

The page asks ``GET /v1/info`` for the bundle (version, classes, index and recall, OOD
calibration, the replica's drift window) and the request limits, and ``POST /v1/predict`` for
the predictions, with the API key the user typed (kept in the tab's ``sessionStorage`` only).
Its assets are static and hold no data, so they are served without a key; every answer carries
a strict Content-Security-Policy (:data:`CSP`): scripts, styles and requests only from the
service's own origin, no inline script, no framing. The page's script builds every URL
relative to its own address, so it works behind a route prefix (``/name/ui``) too.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Response

#: the Content-Security-Policy of every page asset: same origin only, nothing inline, no frames
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

#: route (relative to the app's root) -> (file in ``genoray/serving/page/``, media type)
ASSETS = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/ui/page.css": ("page.css", "text/css; charset=utf-8"),
}

#: headers of every page answer
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def asset_bytes(name: str) -> bytes:
    """The bytes of the page file ``name`` (``index.html``, ``page.js``, ``page.css``) from the
    installed package; a missing file means a broken install (package data not shipped)."""
    try:
        return resources.files("genoray.serving").joinpath("page", name).read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"genoray/serving/page/{name}: the query page's file is missing from this install; "
                                "reinstall genoray (the page ships as package data)") from e


def mount_page(app: FastAPI) -> None:
    """Add the page's routes (:data:`ASSETS`, each with :data:`HEADERS`) to ``app``; the files
    are read once, here, so a replica serves them from memory."""
    for route, (name, media_type) in ASSETS.items():
        app.add_api_route(route, _responder(asset_bytes(name), media_type), methods=["GET"],
                          include_in_schema=False, name=f"page:{name}")


def _responder(body: bytes, media_type: str):
    """A route function without parameters that answers ``body`` (FastAPI would take
    default-valued arguments for query parameters)."""
    def serve() -> Response:
        return Response(content=body, media_type=media_type, headers=HEADERS)

    return serve
