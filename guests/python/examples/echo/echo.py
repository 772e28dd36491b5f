"""The echo contract of the Rust echo guest (guests/echo), in plain WSGI, so that the same
end-to-end tests run against both: the status is 200, the body is the request body, and
X-Echo-Meta is base64 of a JSON object describing the request."""

import base64
import json

# What the environ holds besides strings: objects and the raw headers.
_NOT_CGI = {"wsgi.input", "wsgi.errors", "wasm_gw.headers"}


def application(environ, start_response):
    body = environ["wsgi.input"].read(-1)
    meta = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["SCRIPT_NAME"] + environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "headers": [[name, value] for name, value in environ["wasm_gw.headers"]],
        "body_len": len(body),
        "raw_uri": environ["RAW_URI"],
        "version": environ["SERVER_PROTOCOL"],
    }
    if environ.get("HTTP_X_ECHO_ENVIRON") == "1":
        meta["environ"] = {
            key: str(value) for key, value in environ.items() if key not in _NOT_CGI
        }
    encoded = base64.b64encode(json.dumps(meta).encode("utf-8")).decode("ascii")
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Echo-Meta", encoded),
        ],
    )
    return [body]
