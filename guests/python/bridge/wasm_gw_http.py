"""Outbound HTTP for Python apps on wasm-gw: requests to the destinations the operator
allows (`--allow-outbound`), through the host's wasi:http outgoing-handler.

    import wasm_gw_http

    response = wasm_gw_http.request("GET", "https://api.example.com/rates", timeout=5)
    response.status, response.headers, response.read(), response.json()

Errors: `Denied` (the destination is not allowed), `Timeout`, and `HTTPError` for the
rest, all `HTTPError`s.
"""

import json as _json

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler, streams, types

_CHUNK = 4096  # blocking-write-and-flush takes 4096 bytes at most a call


class HTTPError(Exception):
    """The request got no response: the connection, TLS, DNS or the body failed."""


class Denied(HTTPError):
    """The operator does not allow this destination."""


class Timeout(HTTPError):
    """The destination took longer than allowed."""


_TIMEOUTS = (
    types.ErrorCode_DnsTimeout,
    types.ErrorCode_ConnectionTimeout,
    types.ErrorCode_ConnectionReadTimeout,
    types.ErrorCode_ConnectionWriteTimeout,
    types.ErrorCode_HttpResponseTimeout,
)


def _error(code):
    if isinstance(code, types.ErrorCode_HttpRequestDenied):
        return Denied("outbound request denied: its destination is not allowed")
    if isinstance(code, _TIMEOUTS):
        return Timeout(f"outbound request timed out ({type(code).__name__[10:]})")
    return HTTPError(f"outbound request failed: {code}")


_METHODS = {
    "GET": types.Method_Get,
    "HEAD": types.Method_Head,
    "POST": types.Method_Post,
    "PUT": types.Method_Put,
    "DELETE": types.Method_Delete,
    "PATCH": types.Method_Patch,
    "OPTIONS": types.Method_Options,
}


class Response:
    """A response: `status`, `headers` (a list of (name, value) str pairs) and the body."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self._body = body

    def read(self):
        """The whole body, as bytes."""
        return self._body

    def text(self, encoding="utf-8"):
        return self._body.decode(encoding)

    def json(self):
        return _json.loads(self._body)

    def header(self, name):
        """The first value of header `name`, any case, or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


def request(method, url, headers=None, body=None, timeout=None):
    """Sends `method url` with `headers` (a dict or pairs) and `body` (bytes or str), and
    reads the whole response. `timeout` is the seconds its head may take."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    cuts = [at for at in (rest.find("/"), rest.find("?")) if at >= 0]
    cut = min(cuts) if cuts else len(rest)
    authority, path = rest[:cut], rest[cut:] or "/"
    if path.startswith("?"):
        path = "/" + path
    if not authority:
        raise ValueError(f"{url!r} names no host")

    fields = types.Fields()
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    for name, value in pairs:
        value = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        try:
            fields.append(name, value)
        except Err as error:
            raise ValueError(f"header {name!r} may not be sent: {error.value}") from None
    outgoing = types.OutgoingRequest(fields)
    method = method.upper()
    outgoing.set_method(_METHODS[method]() if method in _METHODS else types.Method_Other(method))
    outgoing.set_scheme(types.Scheme_Https() if scheme.lower() == "https" else types.Scheme_Http())
    outgoing.set_authority(authority)
    outgoing.set_path_with_query(path)
    out_body = outgoing.body()
    options = None
    if timeout is not None:
        options = types.RequestOptions()
        options.set_first_byte_timeout(int(timeout * 1_000_000_000))
    try:
        future = outgoing_handler.handle(outgoing, options)
    except Err as error:
        raise _error(error.value) from None

    data = body.encode() if isinstance(body, str) else bytes(body or b"")
    with out_body.write() as stream:
        for start in range(0, len(data), _CHUNK):
            stream.blocking_write_and_flush(data[start : start + _CHUNK])
    types.OutgoingBody.finish(out_body, None)

    with future:
        with future.subscribe() as ready:
            ready.block()
        got = future.get()
    if not isinstance(got, Ok):
        raise HTTPError("outbound request failed: no response")
    if not isinstance(got.value, Ok):
        raise _error(got.value.value)
    with got.value.value as response:
        status = response.status()
        with response.headers() as fields:
            pairs = [(key, value.decode("latin-1")) for key, value in fields.entries()]
        chunks = []
        with response.consume() as incoming:
            with incoming.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(65536))
                    except Err as error:
                        if isinstance(error.value, streams.StreamError_Closed):
                            break
                        raise HTTPError(f"reading the response failed: {error.value}") from None
    return Response(status, pairs, b"".join(chunks))


def install_urllib():
    """Makes `urllib.request.urlopen` (and openers built after this) send http and https
    requests through the host: call it once, at import time, before the app uses urllib.
    An error status raises `urllib.error.HTTPError` as urllib's own does; a refused or
    failed request raises `urllib.error.URLError` holding the `HTTPError` of this module."""
    import email.message
    import http.client
    import io
    import urllib.error
    import urllib.request
    import urllib.response

    class _Handler(urllib.request.BaseHandler):
        # Before urllib's own HTTP handlers, which would open sockets.
        handler_order = 100

        def _open(self, req):
            timeout = getattr(req, "timeout", None)
            if not isinstance(timeout, (int, float)):
                timeout = None
            # urllib adds Host and Connection itself; the host sets those.
            headers = [
                (name, value)
                for name, value in req.header_items()
                if name.lower() not in ("host", "connection")
            ]
            try:
                response = request(
                    req.get_method(),
                    req.full_url,
                    headers=headers,
                    body=req.data,
                    timeout=timeout,
                )
            except HTTPError as error:
                raise urllib.error.URLError(error) from None
            message = email.message.Message()
            for name, value in response.headers:
                message[name] = value
            result = urllib.response.addinfourl(
                io.BytesIO(response.read()), message, req.full_url, response.status
            )
            # urllib's error processor reads the reason phrase, as http.client gives it.
            result.msg = http.client.responses.get(response.status, "")
            return result

        http_open = _open
        https_open = _open

    urllib.request.install_opener(urllib.request.build_opener(_Handler()))
