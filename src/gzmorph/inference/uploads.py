"""An image upload as the JSON API takes it besides a raw body: the file of a ``multipart/form-data`` form
(``curl -F file=@x.jpg``)."""

from __future__ import annotations

import email.errors
import email.parser
import email.policy


class BadUpload(Exception):
    """The request does not carry an image the way the API takes one (answered 400 with this message)."""


def form_file(body: bytes, content_type: str) -> tuple[bytes, str | None]:
    """The file of a ``multipart/form-data`` body, and its file name: the field ``file``, or else the form's only
    field that is a file. The standard library's ``email`` parser reads the form (``cgi`` is gone from Python 3.13);
    the body is already bounded by MAX_UPLOAD_BYTES."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not form.is_multipart():
        raise BadUpload("a multipart/form-data body needs its boundary= in the Content-Type header")
    if any(isinstance(d, (email.errors.StartBoundaryNotFoundDefect, email.errors.CloseBoundaryNotFoundDefect))
           for d in form.defects):
        raise BadUpload("the multipart/form-data body is incomplete (its boundary lines are missing or cut off)")
    fields = list(form.iter_parts())
    named = [f for f in fields if f.get_param("name", header="content-disposition") == "file"]
    files = named or [f for f in fields if f.get_filename() is not None]
    if len(files) != 1:
        names = ", ".join(repr(f.get_param("name", header="content-disposition")) for f in fields)
        raise BadUpload(f"send one image in the form field 'file' (this form has {names or 'no fields'})")
    data = files[0].get_payload(decode=True)
    return (data if isinstance(data, bytes) else b""), files[0].get_filename()
