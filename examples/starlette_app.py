"""Quick start: Starlette (FastAPI is the same: wrap the app object)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lockgate import Gate, GateSettings, Priority, Rule, RuleClassifier


async def login(request: Request) -> JSONResponse:
    return JSONResponse({"token": "..."})


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"user": "me"})


inner = Starlette(
    routes=[
        Route("/api/v1/auth/login", login, methods=["POST"]),
        Route("/api/v1/users/me", me),
    ]
)

app = Gate(
    inner,
    settings=GateSettings(max_concurrent=20, queue_capacity=200, wait_timeout=3),
    classifier=RuleClassifier(
        [
            Rule(prefix="/api/v1/auth/login", priority=Priority.HIGH),
            Rule(prefix="/batch", priority=Priority.LOW),
        ]
    ),
)
# run with: uvicorn examples.starlette_app:app
