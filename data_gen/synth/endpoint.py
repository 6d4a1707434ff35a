"""Where the LLM backend's requests go, checked before the first image: a local endpoint, and one that answers.

`preflight(settings)` is what the build calls once, after reading the config and before converting anything:

  1. Scope: the endpoint's host must be on this machine or its local network (an address that is not global:
     loopback, private, link-local, shared; a name counts as local when every address it resolves to is),
     unless `synth.llm.allow_remote`. Images and seed text never leave the network by accident.
  2. Reachability: `GET {base_url}/models` must get an HTTP answer within a few seconds. An endpoint that does
     not answer, refuses the API key (401/403) or does not serve `synth.llm.model` stops the build, unless
     `synth.llm.allow_fallback`, in which case the build goes on with a warning and records fall back to
     templates (their share is reported at the end). Without this check a build with no server wrote 100%
     template records and looked like a success.

It returns the lines to print (which host, which model, warnings). Standard library only.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from typing import Any, Optional

from data_gen.errors import ConfigError
from data_gen.synth.chat import ChatError, list_models

PROBE_TIMEOUT_S = 5.0  # the reachability probe waits at most this long (or synth.llm.timeout_s when shorter)


def host_of(base_url: str) -> str:
    """'http://10.0.0.5:8000/v1' -> '10.0.0.5' ('' when the URL has no host)."""
    return urllib.parse.urlsplit(base_url).hostname or ""


def _address_scope(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    return "remote" if ip.is_global else "local"


def literal_scope(host: str) -> Optional[str]:
    """'local' / 'remote' for `localhost` or an IP literal; None for a name (it needs resolving)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return "local"
    try:
        return _address_scope(host)
    except ValueError:
        return None


def host_scope(host: str) -> str:
    """'local', 'remote' or 'unresolved' (see the module docstring); resolves names with the system resolver."""
    scope = literal_scope(host)
    if scope is not None:
        return scope
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return "unresolved"
    scopes = {_address_scope(info[4][0]) for info in infos}
    return "remote" if "remote" in scopes or not scopes else "local"


def remote_refusal(base_url: str) -> str:
    """The message for an endpoint outside this machine and its network without `synth.llm.allow_remote`."""
    return (f"synth.llm.base_url {base_url!r}: host {host_of(base_url)!r} is not on this machine or its local "
            "network; the build would send it every image (windowed, de-identified) with its seed text: set "
            "synth.llm.allow_remote=true if that is allowed for this dataset")


def preflight(settings: Any, api_key: str = "") -> list[str]:
    """Checks the LLM endpoint of `settings` (a `SynthSettings`) before the first image; see the module docstring.

    Args:
      settings: the synth settings; nothing is checked for the template backend.
      api_key: sent as a bearer token (the value of the env var named by `synth.llm.api_key_env`).

    Returns:
      lines for the build to print (empty for the template backend).

    Raises:
      ConfigError: a remote endpoint without `allow_remote`; an endpoint that does not answer, refuses the key or
        does not serve the model, without `allow_fallback`. The message names the key to change.
    """
    if settings.backend != "llm":
        return []
    llm = settings.llm
    host = host_of(llm.base_url)
    scope = host_scope(host)
    if scope == "remote" and not llm.allow_remote:
        raise ConfigError(remote_refusal(llm.base_url))
    problem = None
    try:
        models = list_models(llm.base_url, api_key=api_key, timeout_s=min(PROBE_TIMEOUT_S, llm.timeout_s))
    except ChatError as e:
        models = None
        if e.status in (401, 403):
            problem = (f"it refused the API key (HTTP {e.status}): put the key in the environment variable named "
                       f"by synth.llm.api_key_env ({llm.api_key_env!r})")
        elif e.reason in ("connection_error", "timeout") or (e.status or 0) >= 500:
            problem = f"it does not answer ({e})"
        # another answer (404: a server without /models; a reply that is not a model list) means it is reachable
    if problem is None and models is not None and llm.model not in models:
        problem = f"it does not serve synth.llm.model {llm.model!r} (it serves {', '.join(models[:10]) or 'nothing'})"
    lines = [f"synth: llm backend {llm.model!r} at {host} ({'this machine or network' if scope == 'local' else scope})"]
    if problem is not None:
        message = f"synth.llm.base_url {llm.base_url!r}: {problem}"
        if not llm.allow_fallback:
            raise ConfigError(message + "; start the server or fix the setting, or set synth.llm.allow_fallback=true"
                                        " to write template records instead")
        lines.append(f"warning: {message}; records fall back to templates (synth.llm.allow_fallback=true)")
    return lines
