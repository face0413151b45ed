"""OpenAI's error shape for every failure: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status (5xx only for a failure of the server itself), so the official ``openai`` client raises its usual
exception types and the server keeps serving."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error answered to the client: HTTP ``status`` and OpenAI's error fields (``param``: the request
    field at fault, dotted for nested ones)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        """The JSON response."""
        return JSONResponse(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code))


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def not_found(what: str, name: str, param: str, known: list[str] | None = None) -> APIError:
    """404 for an unknown model or adapter ``name`` (``known``: what exists, listed in the message)."""
    listed = f"; GET /v1/models lists {', '.join(known)}" if known is not None else ""
    return APIError(404, f"{what} '{name}' does not exist{listed}", "not_found_error", param, f"{what}_not_found")


def _validation(_req, exc: RequestValidationError):
    err = exc.errors()[0] if exc.errors() else {}
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}").response()
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    given = f" (got {err['input']!r:.80})" if "input" in err and err.get("type") != "missing" else ""
    return APIError(400, f"{loc or 'body'}: {err.get('msg', 'invalid')}{given}", param=loc or None).response()


def _http(_req, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return APIError(exc.status_code, str(exc.detail), kind).response()


def _internal(_req, exc: Exception):
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()


def add_error_handlers(app: FastAPI) -> None:
    """Answer APIError, invalid bodies, unknown routes and unexpected failures in OpenAI's shape."""
    app.add_exception_handler(APIError, lambda _req, exc: exc.response())
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
