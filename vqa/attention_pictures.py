"""``vqa predict --attention OUT.png``: each answer's attention maps drawn over its photo, one PNG per question.

A run on a grid (or a grid read as regions) gets heatmaps (``vqa.heatmap``), a run on detector
regions its boxes (``vqa.box_drawing``), in the same panel layout: one panel per glimpse or
hop under a title line with the question and the top answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vqa import visual
from vqa.errors import VQAError, brief
from vqa.questions import Question, unreadable

ATTENTION_PICTURE = (256, 640)  # px: --attention panels show the image's longest side between these


def attention_paths(path: Path, count: int, numbered: bool) -> list[Path]:
    """Where ``--attention OUT.png`` draws each question's maps: OUT.png for ``--question``,
    OUT-1.png, OUT-2.png, ... for the questions of ``--questions-file`` in file order.

    Raises:
        VQAError: ``path`` does not end in .png.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise VQAError(f"--attention {path} must be a .png file name (the maps are written as PNG).")
    if not numbered:
        return [path]
    return [path.with_name(f"{path.stem}-{number}{path.suffix}") for number in range(1, count + 1)]


def check_attention(run_dir: Path, run, questions: Sequence[Question], pictures: list[Path],
                    questions_file: Path | None) -> None:
    """Refuse ``--attention`` for a run without attention maps, or when a picture would overwrite an input.

    Raises:
        VQAError: the run reads a vector per image, or a picture is also one of the inputs.
    """
    from vqa.paths import check_outputs
    from vqa.run_folder import model_path, run_info_path

    source = visual.SOURCES.get(run.features)
    if source is None or not visual.KINDS[source.kind].parts:
        raise VQAError(f"--attention needs an attention run on a grid or on regions (model san, multi-glimpse, "
                       f"...); {run_dir} is a {run.model} run on {run.features} image features, which has no "
                       "attention maps.")
    inputs = {"--questions-file": questions_file, "the run's model": model_path(run_dir),
              "the run's description": run_info_path(run_dir)}
    inputs |= {"--image" if item.source == "--question" else f"the image of {item.source}": item.image
               for item in questions}
    outputs = {"--attention" if questions_file is None else f"--attention (for {item.source})": picture
               for item, picture in zip(questions, pictures)}
    check_outputs(inputs, outputs)


def draw_attention(path: Path, result, item: Question, names: list[str]) -> None:
    """The answer's maps over its image (longest side within ``ATTENTION_PICTURE`` px), written as a PNG file.

    Args:
        path: the PNG file.
        result: the question's ``vqa.predict.Answer`` with its ``attention`` (and ``boxes``, over regions).
        item: the question, for its image.
        names: the panel names (``vqa.heatmap.map_names``).
    """
    from PIL import Image

    from vqa import box_drawing, heatmap
    from vqa import images as images_lib

    try:
        with Image.open(item.image) as image:
            width, height = image.size
        smallest, largest = ATTENTION_PICTURE
        scale = min(max(1.0, smallest / max(width, height)), largest / max(width, height))
        picture = images_lib.load_image(item.image, (max(1, round(height * scale)), max(1, round(width * scale))))
    except images_lib.UnreadableImage as error:
        raise VQAError(unreadable(item.image_source, item.image, error.reason)) from None
    except (OSError, ValueError) as error:  # the header read
        raise VQAError(unreadable(item.image_source, item.image, brief(error))) from None
    answer, score = result.answers[0]
    title = f"Q: {result.question}   A: {answer} ({score:.2f})"
    if result.boxes is not None:  # detector boxes, in the photo's pixels
        maps = box_drawing.BoxMaps(result.attention, result.boxes, (width, height))
        heatmap.write_png(path, box_drawing.render(picture, maps, names, title=title))
    else:
        heatmap.write_png(path, heatmap.render(picture, result.attention, names, title=title))
