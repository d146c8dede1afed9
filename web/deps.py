"""How a route gets the runtime the API built in its lifespan: ``rt: RuntimeDep``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from fleet.runtime import Runtime


@contextmanager
def serve_runtime(api: FastAPI, rt: Runtime) -> Iterator[None]:
    api.state.runtime = rt
    try:
        yield
    finally:
        del api.state.runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
