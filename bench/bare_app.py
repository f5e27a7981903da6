"""The framework's own ceiling: a bare FastAPI route returning a constant, served by uvicorn
with the settings ``exhaust serve`` uses (one process, ``log_level="warning"``)."""

from __future__ import annotations

import sys

from fastapi import FastAPI

app = FastAPI()
CONSTANT = {"id": "api.bench", "ver": "1.0", "responseCode": "OK", "result": {"ok": True}}


@app.get("/constant")
async def constant() -> dict[str, object]:
    return CONSTANT


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
