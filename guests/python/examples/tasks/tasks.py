"""The tasks API of the Rust tasks guest (guests/tasks), in plain WSGI: the same routes,
status codes and JSON. Tasks live in the host's key-value store through wasm_gw_kv, so every
worker shares them and they survive restarts."""

import json

from wasm_gw_kv import Bucket, StoreError, Unavailable

TASKS = "tasks"
COUNTERS = "counters"


def task_key(task_id):
    # Zero-padded, so that the store's own order is the order of ids.
    return f"{task_id:020}"


def respond(start_response, status, value=None, headers=()):
    """A JSON response, or one with no content at all (204) when `value` is None."""
    if value is None:
        start_response(status, list(headers))
        return []
    body = json.dumps(value, separators=(",", ":")).encode()
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(status, fields + list(headers))
    return [body]


def error(start_response, status, message, headers=()):
    return respond(start_response, status, {"error": message}, headers)


def method_not_allowed(start_response, allow):
    return error(start_response, "405 Method Not Allowed", "method not allowed", [("Allow", allow)])


def read_object(environ):
    """The body as a JSON object, or the message that says why it is not one."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        fields = json.loads(body)
    except ValueError as why:
        return None, f"invalid JSON: {why}"
    if not isinstance(fields, dict):
        return None, "the body must be a JSON object"
    return fields, None


def application(environ, start_response):
    try:
        return route(environ, start_response)
    except Unavailable as why:
        environ["wsgi.errors"].write(f"tasks: key-value store: {why}\n")
        return error(start_response, "503 Service Unavailable", f"storage unavailable: {why}",
                     [("Retry-After", "1")])
    except StoreError as why:
        return error(start_response, "400 Bad Request", f"cannot store this: {why}")


def route(environ, start_response):
    path = environ["PATH_INFO"].rstrip("/")
    method = environ["REQUEST_METHOD"]
    if not path.startswith("/tasks"):
        return error(start_response, "404 Not Found", "not found")
    rest = path[len("/tasks"):]
    tasks = Bucket.open(TASKS)
    if not rest:
        if method in ("GET", "HEAD"):
            return respond(start_response, "200 OK", list_tasks(tasks))
        if method == "POST":
            return create(environ, start_response, tasks)
        return method_not_allowed(start_response, "GET, HEAD, POST")
    task_id = rest[1:] if rest.startswith("/") else ""
    if not task_id.isdigit() or not task_id.isascii():
        return error(start_response, "404 Not Found", "not found")
    task_id = int(task_id)
    key = task_key(task_id)
    missing = f"no task {task_id}"
    if method in ("GET", "HEAD"):
        task = tasks.get_json(key)
        if task is None:
            return error(start_response, "404 Not Found", missing)
        return respond(start_response, "200 OK", task)
    if method == "PATCH":
        return update(environ, start_response, tasks, key, missing)
    if method == "DELETE":
        if not tasks.exists(key):
            return error(start_response, "404 Not Found", missing)
        tasks.delete(key)
        return respond(start_response, "204 No Content")
    return method_not_allowed(start_response, "GET, HEAD, PATCH, DELETE")


def list_tasks(tasks):
    # A listing may name a key twice while the bucket grows; sorted keys are id order.
    keys = sorted(set(tasks.keys()))
    return [json.loads(value) for value in tasks.get_many(keys) if value is not None]


def create(environ, start_response, tasks):
    fields, why = read_object(environ)
    if why:
        return error(start_response, "400 Bad Request", why)
    title = fields.get("title")
    if not isinstance(title, str):
        return error(start_response, "400 Bad Request", '"title" must be a string')
    done = fields.get("done", False)
    if not isinstance(done, bool):
        return error(start_response, "400 Bad Request", '"done" must be true or false')
    task_id = Bucket.open(COUNTERS).increment(TASKS)
    task = {"id": task_id, "title": title, "done": done}
    tasks.set_json(task_key(task_id), task)
    # Under a mount, the task's URL starts with the mount's prefix.
    location = f"{environ['SCRIPT_NAME']}/tasks/{task_id}"
    return respond(start_response, "201 Created", task, [("Location", location)])


def update(environ, start_response, tasks, key, missing):
    fields, why = read_object(environ)
    if why:
        return error(start_response, "400 Bad Request", why)
    title = fields.get("title")
    if "title" in fields and not isinstance(title, str):
        return error(start_response, "400 Bad Request", '"title" must be a string')
    done = fields.get("done")
    if "done" in fields and not isinstance(done, bool):
        return error(start_response, "400 Bad Request", '"done" must be true or false')

    def change(task):
        if task is None:
            return None
        if "title" in fields:
            task["title"] = title
        if "done" in fields:
            task["done"] = done
        return task

    # Compare-and-swap: a concurrent PATCH of another field is never lost.
    task = tasks.update_json(key, change)
    if task is None:
        return error(start_response, "404 Not Found", missing)
    return respond(start_response, "200 OK", task)
