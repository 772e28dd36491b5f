def hello_app(environ, start_response):
    name = environ.get("QUERY_STRING", "").split("=")[-1] or "world"
    body = f"Hello, {name}!\n".encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
