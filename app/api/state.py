"""What the HTTP layer needs from the running gateway, created in the lifespan and injected."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services.registry import Services


async def get_services(request: Request) -> Services:
    """The Services object stored on the app by the lifespan (a coroutine, as every dependency
    here is: FastAPI runs a plain function in its thread pool, a thread hop per request)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
