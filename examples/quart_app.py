"""Quick start: Quart -- wrap its ASGI callable, keep the Quart object."""

from quart import Quart

from lockgate import Gate, GateSettings

app = Quart(__name__)


@app.get("/api/v1/users/me")
async def me() -> dict[str, str]:
    return {"user": "me"}


app.asgi_app = Gate(app.asgi_app, GateSettings(max_concurrent=20))  # type: ignore[method-assign,assignment]
# run with: hypercorn examples.quart_app:app
