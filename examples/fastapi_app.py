"""Quick start: FastAPI."""

from fastapi import FastAPI

from lockgate import Gate

api = FastAPI()


@api.get("/api/v1/users/me")
async def me() -> dict[str, str]:
    return {"user": "me"}


app = Gate(api)  # sized by BACKPRESSURE_* variables, e.g. from `lockgate plan --format env`
# run with: BACKPRESSURE_MAX_CONCURRENT=20 uvicorn examples.fastapi_app:app
