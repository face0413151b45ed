"""Request bodies and which OpenAI fields this server honours.

Every field a request names is either honoured or refused with 400 naming it: the declared fields below are
honoured; OpenAI fields this server does not implement are accepted only at their neutral value (the one
that asks for nothing, :data:`NEUTRAL`) and refused otherwise; any other field is refused as unknown.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .http_errors import APIError

INT64 = 2**63  # OpenAI's seed is an int64; torch's generator takes no wider seed either

# OpenAI fields not implemented here -> the values that ask for nothing (accepted, and nothing to do)
NEUTRAL: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logit_bias": (None, {}), "best_of": (None, 1), "suffix": (None, ""), "store": (None, False), "metadata": (None, {}),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "service_tier": (None, "auto", "default"), "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "echo": (None, False),
}
STREAM_OPTIONS = {"include_usage"}


def _same(value, ok) -> bool:
    return value == ok and isinstance(value, bool) == isinstance(ok, bool)  # false is not 0 (logprobs: 0 asks)


def check_fields(body: BaseModel) -> None:
    """400 for a field of ``body`` this server does not honour, naming it."""
    for name, value in (body.model_extra or {}).items():
        if name not in NEUTRAL:
            raise APIError(400, f"{name}: unknown field for this route (this server implements the OpenAI fields "
                           "listed in its README)", param=name, code="unsupported_field")
        if not any(_same(value, ok) for ok in NEUTRAL[name]):
            allowed = ", ".join("null" if v is None else repr(v) for v in NEUTRAL[name])
            raise APIError(400, f"{name} = {value!r:.80} is not supported by this server (accepted: {allowed})",
                           param=name, code="unsupported_field")
    options = getattr(body, "stream_options", None)
    if options is not None:
        if not getattr(body, "stream", False):
            raise APIError(400, "stream_options: only allowed with stream = true", param="stream_options")
        for key in options:
            if key not in STREAM_OPTIONS:
                raise APIError(400, f"stream_options.{key}: not supported (accepted: include_usage)",
                               param=f"stream_options.{key}", code="unsupported_field")


class _Open(BaseModel):
    """An OpenAI body: undeclared fields are kept for :func:`check_fields` to judge."""

    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Generation(_Open):
    """The generation fields completions and chat share."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(1, ge=1, le=1)
    user: str | None = None  # an end-user id for the caller's own bookkeeping; nothing to do with it here


class CompletionRequest(_Generation):
    """POST /v1/completions."""

    prompt: str | list[str]
    echo: bool | None = False


class ChatMessage(_Closed):
    """One chat message; ``content`` a string or OpenAI's list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self, where: str) -> str:
        """The message's text (``where``: its field path, named when a part is not text)."""
        if not isinstance(self.content, list):
            return self.content or ""
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content.{i}: only text parts are supported (type 'text', a 'text' string)",
                               param=f"{where}.content.{i}")
        return "".join(p["text"] for p in self.content)


class ChatRequest(_Generation):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


class ClassifyRequest(_Closed):
    """POST /v1/classify: label-word scores of the task model under an adapter."""

    model: str
    input: str | list[str]
    task: str | None = None


class AdapterRequest(_Closed):
    """POST /v1/adapters: serve the adapter folder ``path`` as ``name``."""

    name: str
    path: str
