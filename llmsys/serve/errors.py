"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.

Handlers raise `APIError` (or one of the shortcuts below); `app.py` turns it, FastAPI's
validation errors and unknown routes into this body, so no client mistake becomes a 500.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """FastAPI's (pydantic's) validation errors as one 400 that names the field and value."""
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {detail}".rstrip(": "))
    param = _param(first.get("loc", ()))
    same = [e for e in errors if _param(e.get("loc", ())) == param]
    allowed = " / ".join(dict.fromkeys(str(e.get("msg", "")).removeprefix("Value error, ")
                                       for e in same[:4]))
    if not param:
        return bad_request(f"invalid request body: {allowed}")
    if first.get("type") == "missing":
        return bad_request(f"'{param}' is required", param)
    value = repr(first.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    return bad_request(f"invalid value {value} for '{param}': {allowed}", param)


_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple | list) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'; stops at union tags."""
    parts = list(loc)[1:] if loc and loc[0] == "body" else list(loc)
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and _FIELD.fullmatch(p) and p not in _TYPE_TAGS:
            out += f".{p}" if out else p
        else:
            break
    return out
