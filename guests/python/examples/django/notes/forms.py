from django import forms


class NoteForm(forms.Form):
    name = forms.SlugField(max_length=40)
    text = forms.CharField(max_length=1000, widget=forms.Textarea)
