"""The demo's relational questions: one object of a scene asked about relative to another.

Two families, each a VQA v2-style question type (``RELATIONAL_TYPES``, apart from the
demo's other types, so the accuracy per type shows them on their own rows):
    "What is the color of the object just left of the {shape}?"   (``LEFT_OF_TYPE``, other)
    "Is the {shape} bigger than the {shape}?"                      (``BIGGER_TYPE``, yes/no)
Both name only shapes that occur once in the scene and are asked only when the answer
is clear. Scenes are lists of objects ``{"shape", "color", "box": [x0, y0, x1, y1]}`` in
pixels, as ``vqa.demo.data`` draws them; it balances the answers per wording.
"""

from __future__ import annotations

from collections import Counter

LEFT_OF_TYPE = "what is the color of the"
BIGGER_TYPE = "is the ... bigger than the"
RELATIONAL_TYPES = (LEFT_OF_TYPE, BIGGER_TYPE)
# "just left of" is asked only when the nearest object on the left is this much (in px, centre x)
# nearer than the next one, and "bigger than" only when one box is this much larger in area.
LEFT_GAP = 8
BIGGER_RATIO = 1.25


def _centre_x(obj: dict) -> float:
    return (obj["box"][0] + obj["box"][2]) / 2


def _area(obj: dict) -> float:
    x0, y0, x1, y1 = obj["box"]
    return float((x1 - x0) * (y1 - y0))


def just_left_of(target: dict, scene: list[dict]) -> dict | None:
    """The object just left of ``target``, or None when there is none or it is ambiguous.

    Among the objects whose boxes overlap ``target``'s vertically and whose box centre lies left of
    its centre, the one nearest by centre x; None when none is, or when the second nearest is
    less than ``LEFT_GAP`` px further (no clear answer).
    """
    _, top, _, bottom = target["box"]
    left = sorted((obj for obj in scene if obj is not target and obj["box"][1] < bottom and obj["box"][3] > top
                   and _centre_x(obj) < _centre_x(target)), key=_centre_x, reverse=True)
    if not left or len(left) > 1 and _centre_x(left[0]) - _centre_x(left[1]) < LEFT_GAP:
        return None
    return left[0]


def relational_questions(scene: list[dict]) -> dict[str, list[dict]]:
    """Every relational question askable about ``scene``, with its answer, by question type.

    "What is the color of the object just left of the {shape}?" when ``just_left_of`` finds an
    object and another one also lies left of the shape (in the other row): then "the object that
    is not the {shape}", or "the one on the left", does not answer it, so one glimpse cannot; "Is the {shape} bigger than the {shape}?" when one box is at least ``BIGGER_RATIO``
    times the other's area, each pair both ways round (one "yes", one "no").

    Returns:
        ``{LEFT_OF_TYPE: [...], BIGGER_TYPE: [...]}``, each question a dict with question,
        question_type, answer_type and answer (the canonical form).
    """
    shape_counts = Counter(obj["shape"] for obj in scene)
    named = [obj for obj in scene if shape_counts[obj["shape"]] == 1]
    left_of = [{"question": f"What is the color of the object just left of the {obj['shape']}?",
                "question_type": LEFT_OF_TYPE, "answer_type": "other", "answer": neighbour["color"]}
               for obj in named if (neighbour := just_left_of(obj, scene)) is not None
               and any(other is not obj and other is not neighbour and _centre_x(other) < _centre_x(obj)
                       for other in scene)]
    bigger = [{"question": f"Is the {first['shape']} bigger than the {second['shape']}?",
               "question_type": BIGGER_TYPE, "answer_type": "yes/no",
               "answer": "yes" if _area(first) > _area(second) else "no"}
              for first in named for second in named
              if first is not second and max(_area(first), _area(second)) >= BIGGER_RATIO * min(_area(first),
                                                                                                 _area(second))]
    return {LEFT_OF_TYPE: left_of, BIGGER_TYPE: bigger}
