"""A Falcon app on wasm-gw, written as Falcon's tutorial writes one: resources with
responders, typed URI fields, JSON media in and out, a form, HTTP errors and a stream."""

import falcon


class Notes:
    def __init__(self, notes):
        self.notes = notes

    def on_get(self, req, resp):
        resp.media = [{"id": id, "title": title} for id, title in sorted(self.notes.items())]

    def on_post(self, req, resp):
        body = req.get_media()
        title = body.get("title") if isinstance(body, dict) else None
        if not isinstance(title, str) or not title:
            raise falcon.HTTPBadRequest(title="a note needs a title")
        note_id = len(self.notes) + 1
        self.notes[note_id] = title
        resp.status = falcon.HTTP_201
        resp.media = {"id": note_id, "title": title}


class Note:
    def __init__(self, notes):
        self.notes = notes

    def on_get(self, req, resp, note_id):
        if note_id not in self.notes:
            raise falcon.HTTPNotFound(title=f"no note {note_id}")
        resp.media = {"id": note_id, "title": self.notes[note_id]}


class Greeting:
    def on_post(self, req, resp):
        # An HTML form, as a browser posts it.
        form = req.get_media()
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = f"Hello, {form.get('name', 'nobody')}!"


class Count:
    def on_get(self, req, resp, n):
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = (f"{i}\n".encode() for i in range(n))


notes = {}
app = falcon.App()
app.add_route("/notes", Notes(notes))
app.add_route("/notes/{note_id:int}", Note(notes))
app.add_route("/greet", Greeting())
app.add_route("/count/{n:int}", Count())
