"""A minimal client for OpenAI-compatible chat endpoints (vLLM, TGI, SGLang, ...), standard library only.

`chat_completion` posts `{base_url}/chat/completions` and returns the first choice's text; `list_models` gets
`{base_url}/models` (the endpoint check before a build, `endpoint.preflight`). Every
failure becomes a `ChatError` with a short countable `reason` (`http_error`, `timeout`, `connection_error`,
`bad_response`) so the backend can retry, count and fall back without knowing about urllib's exception zoo.
Loopback servers (127.0.0.1, localhost, ::1) are reached without any proxy from the environment.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

import numpy as np

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ChatError(Exception):
    """A failed chat request. `reason` is a short code; `status` the HTTP status when there was one."""

    def __init__(self, reason: str, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.reason = reason
        self.status = status


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 `[H, W]` or `[H, W, 3]` -> 'data:image/png;base64,...' (the `image_url` content part's url)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in _LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _message_text(content: Any) -> str:
    """The reply text: a string, or a list of content parts (some servers return parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise TypeError(f"unexpected message content type {type(content).__name__}")


def _fetch(request: urllib.request.Request, timeout_s: float) -> bytes:
    """The response body of `request`; every failure becomes a ChatError (see the module docstring)."""
    url, method = request.full_url, request.get_method()
    try:
        with _opener(url).open(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        detail = e.read(500).decode("utf-8", "replace") if e.fp else ""
        raise ChatError("http_error", f"{method} {url}: HTTP {e.code} {e.reason}: {detail}", status=e.code) from e
    except (socket.timeout, TimeoutError) as e:
        raise ChatError("timeout", f"{method} {url}: no reply within {timeout_s} s") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise ChatError("timeout", f"{method} {url}: no reply within {timeout_s} s") from e
        raise ChatError("connection_error", f"{method} {url}: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise ChatError("connection_error", f"{method} {url}: {e}") from e


def _headers(api_key: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def list_models(base_url: str, *, api_key: str = "", timeout_s: float = 5.0) -> list[str]:
    """The model ids of `GET {base_url}/models` (`{"data": [{"id": ...}, ...]}`).

    Raises:
      ChatError: as `chat_completion` ('bad_response' when the answer is not a model list).
    """
    url = base_url.rstrip("/") + "/models"
    raw = _fetch(urllib.request.Request(url, headers=_headers(api_key), method="GET"), timeout_s)
    try:
        return [str(m["id"]) for m in json.loads(raw.decode("utf-8"))["data"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ChatError("bad_response", f"GET {url}: not an OpenAI model list: {raw[:200]!r}") from e


def chat_completion(base_url: str, payload: dict, *, api_key: str = "", timeout_s: float = 120.0) -> str:
    """POSTs one chat completion request and returns `choices[0].message.content` as text.

    Args:
      base_url: server root including the API prefix, e.g. 'http://127.0.0.1:8000/v1'.
      payload: the JSON body (`model`, `messages`, `temperature`, `max_tokens`, ...).
      api_key: sent as 'Authorization: Bearer <key>' when non-empty.
      timeout_s: socket timeout for connect and each read.

    Raises:
      ChatError: reason 'http_error' (non-2xx; `status` set), 'timeout', 'connection_error' or 'bad_response'.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    body = json.dumps(payload).encode("utf-8")
    raw = _fetch(urllib.request.Request(url, data=body, headers=_headers(api_key), method="POST"), timeout_s)
    try:
        reply = json.loads(raw.decode("utf-8"))
        return _message_text(reply["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ChatError("bad_response", f"POST {url}: not an OpenAI chat completion: {raw[:200]!r}") from e
