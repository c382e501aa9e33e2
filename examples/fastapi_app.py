"""Quick start: FastAPI."""

from fastapi import FastAPI

from lockgate import Gate, GateSettings

api = FastAPI()


@api.get("/api/v1/users/me")
async def me() -> dict[str, str]:
    return {"user": "me"}


app = Gate(api, GateSettings.preset("production"))
# run with: uvicorn examples.fastapi_app:app
