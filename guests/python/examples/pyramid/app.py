"""A Pyramid app on wasm-gw, configured imperatively as Pyramid's docs show: routes with
placeholders, the JSON renderer, a form, a not-found view and an exception view."""

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPCreated, HTTPNotFound
from pyramid.response import Response

notes = {}


def index(request):
    return {"app": "pyramid", "notes": len(notes)}


def add_note(request):
    title = request.POST.get("title")
    if not title:
        raise HTTPBadRequest("a note needs a title")
    note_id = len(notes) + 1
    notes[note_id] = title
    request.response.status_code = HTTPCreated.code
    return {"id": note_id, "title": title}


def get_note(request):
    note_id = int(request.matchdict["id"])
    if note_id not in notes:
        raise HTTPNotFound(f"no note {note_id}")
    return {"id": note_id, "title": notes[note_id]}


def count(request):
    n = int(request.matchdict["n"])
    return Response(app_iter=(f"{i}\n".encode() for i in range(n)), content_type="text/plain")


def not_found(request):
    request.response.status_code = 404
    return {"error": "not found", "path": request.path}


def failed(exc, request):
    request.response.status_code = 500
    return {"error": type(exc).__name__}


def boom(request):
    return 1 // 0


with Configurator() as config:
    config.add_route("home", "/")
    config.add_route("notes", "/notes")
    config.add_route("note", "/notes/{id:\\d+}")
    config.add_route("count", "/count/{n:\\d+}")
    config.add_route("boom", "/boom")
    config.add_view(index, route_name="home", renderer="json")
    config.add_view(add_note, route_name="notes", request_method="POST", renderer="json")
    config.add_view(get_note, route_name="note", renderer="json")
    config.add_view(count, route_name="count")
    config.add_view(boom, route_name="boom")
    config.add_notfound_view(not_found, renderer="json")
    config.add_exception_view(failed, context=ZeroDivisionError, renderer="json")
    app = config.make_wsgi_app()
