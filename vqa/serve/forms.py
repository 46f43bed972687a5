"""The form ``POST /api/answer`` reads: its type, its end, the parser's limits, all said in our words.

FastAPI parses the form (starlette's ``MultiPartParser`` over python-multipart) before the
handler runs, and three things came out in the framework's words or not at all:

- a body of another type (JSON, say) parses as an empty form, which read as "no question":
  ``FormRoute`` answers 415 before parsing, asking for multipart/form-data;
- python-multipart does not check that the body reaches its closing boundary, so a body cut
  short parsed as the parts that arrived, again "no question": ``FormRequest`` watches the
  body stream for the closing boundary and answers 400 when it never came;
- the parser's limits (``form_limits``, from ``Limits``) answer "Too many fields. Maximum number
  of fields is 1000."; ``parser_error`` says each of its complaints as a ``ClientError``.
"""

from __future__ import annotations

import email.message
from typing import Callable

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from vqa.serve.uploads import ClientError, Limits

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the page and curl -F; curl -d
FIELDS_BESIDE_QUESTIONS = 4  # image_id, top_k, heatmap, region_id
FILES = 2  # image, regions
EXAMPLE = "curl -F image=@photo.jpg -F 'question=what color is the car?' URL/api/answer"
CUT_SHORT = ("The request body ends before the form's closing boundary, so it was cut short; "
             "send the whole multipart/form-data body again.")


def form_limits(limits: Limits) -> dict[str, int]:
    """What the multipart parser may read: ``limits.max_questions`` questions and the other fields, two files.

    A field may hold ``limits.max_question_chars`` characters of 4-byte UTF-8 and then some, so that a question a
    little too long is refused by ``check_questions``, which says how long it is.
    """
    return {"max_fields": limits.max_questions + FIELDS_BESIDE_QUESTIONS, "max_files": FILES,
            "max_part_size": limits.max_question_chars * 4 + 1024}


def parser_error(detail: str, limits: Limits) -> ClientError | None:
    """The multipart parser's complaint ``detail`` said in our words (None: not one of its complaints)."""
    if detail.startswith("Too many fields"):
        return ClientError(422, f"The form has more fields than {limits.max_questions} questions and the other "
                                f"fields take; send at most {limits.max_questions} questions per request.")
    if detail.startswith("Too many files"):
        return ClientError(422, 'The form has more than two files; send one image in "image" (and, for a run on '
                                'detector regions, one file in "regions").')
    if detail.startswith("Part exceeded maximum size"):
        return ClientError(422, f"A form field is far too long; ask a shorter question (at most "
                                f"{limits.max_question_chars} characters).")
    if detail in ("Invalid multipart data.", "Missing boundary in multipart.") or "Content-Disposition" in detail:
        return ClientError(400, f"The multipart/form-data body cannot be read; send the form as a browser or "
                                f"curl does, e.g. {EXAMPLE}.")
    return None


def _content_type(request: Request) -> email.message.Message:
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    return message


class FormRequest(Request):
    """A request whose multipart body must reach its closing boundary (a 400 sentence otherwise)."""

    async def stream(self):
        boundary = _content_type(self).get_param("boundary")
        if not isinstance(boundary, str) or _content_type(self).get_content_type() != "multipart/form-data":
            async for chunk in super().stream():
                yield chunk
            return
        closing = f"--{boundary}--".encode("latin-1")
        tail, closed = b"", False
        async for chunk in super().stream():
            if not closed:
                seen = tail + chunk
                closed = closing in seen
                tail = seen[-(len(closing) - 1):]
            yield chunk
        if not closed:
            # An HTTPException passes through FastAPI's form parsing as it is; any other error becomes its own 400.
            raise HTTPException(400, CUT_SHORT)


class FormRoute(APIRoute):
    """A route whose body must be a form (415 otherwise), read through ``FormRequest``."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def form_handler(request: Request):
            kind = _content_type(request).get_content_type() if request.headers.get("content-type") else None
            if kind not in FORM_TYPES:
                sent = f"The request body is {kind}" if kind else "The request has no Content-Type"
                raise ClientError(415, f"{sent}; send the image and questions as multipart/form-data, "
                                       f"e.g. {EXAMPLE}.")
            return await handler(FormRequest(request.scope, request.receive))

        return form_handler
