"""A small notes app: templates, a form with CSRF protection, JSON, a streamed response,
time zones, and Django's own error pages."""

from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from .forms import NoteForm

NOTES = {}


@require_GET
def index(request):
    return render(request, "notes/index.html", {"notes": sorted(NOTES.items())})


@require_http_methods(["GET", "POST"])
def notes(request):
    if request.method == "POST":
        form = NoteForm(request.POST)
        if form.is_valid():
            NOTES[form.cleaned_data["name"]] = form.cleaned_data["text"]
            return redirect("note", name=form.cleaned_data["name"])
        return render(request, "notes/form.html", {"form": form}, status=400)
    return render(request, "notes/form.html", {"form": NoteForm()})


@require_GET
def note(request, name):
    if name not in NOTES:
        raise Http404(f"no note {name}")
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"name": name, "text": NOTES[name]})
    return render(request, "notes/note.html", {"name": name, "text": NOTES[name]})


@require_GET
def count(request, n):
    return StreamingHttpResponse((f"{i}\n" for i in range(n)), content_type="text/plain")


@require_GET
def local_time(request):
    # The zone's rules come from the tzdata package's files, read on first use.
    now = timezone.localtime(timezone.now())
    return JsonResponse({"zone": str(now.tzinfo), "utc_offset": now.strftime("%z")})


def boom(request):
    raise RuntimeError("django view failed on purpose")
