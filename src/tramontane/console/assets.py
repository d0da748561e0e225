"""The console's static files: its own script and style sheet (in static/), and the
third-party libraries installed from the npm registry at install time (in
assets/node_modules, see scripts/install-console-assets.sh). Only the files named
here are served; nothing is loaded from another origin."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_MODULES = _HERE / "assets" / "node_modules"

# URL name -> file
FILES: dict[str, Path] = {
    "console.css": _HERE / "static" / "console.css",
    "console.js": _HERE / "static" / "console.js",
    "htmx.min.js": _MODULES / "htmx.org" / "dist" / "htmx.min.js",
    "chart.umd.min.js": _MODULES / "chart.js" / "dist" / "chart.umd.min.js",
}
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def missing() -> list[str]:
    """Files the install did not provide (the npm step skipped, say)."""
    return [name for name, path in FILES.items() if not path.is_file()]


router = APIRouter(include_in_schema=False)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    path = FILES.get(name)
    if path is None or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(
        path,
        media_type=_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
