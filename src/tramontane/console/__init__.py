"""The web console, served at `/` beside the API (`/v1`): server-rendered pages
(Jinja2, htmx, Chart.js) that act through the platform's own API as the signed-in
key, so a console user can do exactly what their key can. See docs/console.md."""

from fastapi import APIRouter

from . import admin, agents, assets, auth, deployments, evaluations, finetuning, models, playground, sandboxes, usage

# Each module's router, in the navigation's order.
ROUTERS = tuple(
    module.router
    for module in (
        assets, auth, playground, models, usage, deployments, sandboxes, finetuning, evaluations, agents, admin
    )
)

router = APIRouter(include_in_schema=False)
for _router in ROUTERS:
    router.include_router(_router)

__all__ = ["ROUTERS", "router"]
