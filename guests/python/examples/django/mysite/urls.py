from django.urls import path

from notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("notes/", views.notes, name="notes"),
    path("notes/<slug:name>/", views.note, name="note"),
    path("count/<int:n>/", views.count, name="count"),
    path("time/", views.local_time, name="time"),
    path("boom/", views.boom),
]
