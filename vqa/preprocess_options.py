"""The settings of ``vqa preprocess``, checked against each other before any work is done.

``check_config`` says in one sentence what is wrong with a preprocess config (a missing
folder, options that exclude each other, a value out of range) before anything is loaded;
``extracted`` says what extraction from the images keeps once imports are taken into account.
"""

from __future__ import annotations

from pathlib import Path

from vqa.config import PreprocessConfig
from vqa.errors import VQAError

FEATURE_CHOICES = ("auto", "fc7", "grid", "both", "none")  # preprocess.features: what extraction keeps


def check_config(config: PreprocessConfig) -> None:
    """Every setting in range, said in one sentence before anything is loaded."""
    if not Path(config.data_dir).is_dir():
        raise VQAError(f"--data-dir {config.data_dir} is not a folder; point it at the unpacked VQA v2 files.")
    if config.images_dir and not Path(config.images_dir).is_dir():
        raise VQAError(f"--images {config.images_dir} is not a folder of COCO images.")
    if config.grid_features and not Path(config.grid_features).is_file():
        raise VQAError(f"--grid-features {config.grid_features} is not a file; pass the HDF5 file of grid features "
                       "(pytorch-vqa's preprocess-images.py layout).")
    if config.features_mat and not config.id_map:
        raise VQAError("--features-mat and --id-map go together: pass both (the .mat file and its id map).")
    if config.id_map and not (config.features_mat or config.regions):
        raise VQAError("--id-map goes with --features-mat (its columns) or --regions (the rows of an HDF5 "
                       "region file); pass one of them, or drop --id-map.")
    if config.id_map and config.features_mat and config.regions:
        raise VQAError("--id-map would serve both --features-mat and --regions; import them into OUT in two runs.")
    if config.id_map and not Path(config.id_map).is_file():
        raise VQAError(f"--id-map {config.id_map} is not a file.")
    if config.regions:
        from vqa import region_import

        # An unreadable or unknown source, or an HDF5 one without its id map, is said before any work.
        region_import.check_source(config.regions, config.split_list, config.id_map or None)
    if config.feature_dtype not in ("float16", "float32"):
        raise VQAError(f"--feature-dtype must be float16 or float32, not {config.feature_dtype!r}.")
    check_feature_options(config)
    check_import_files(config)
    if not config.split_list:
        raise VQAError("--splits is empty; name at least one split, e.g. train2014.")
    for option, value in (("--limit", config.limit), ("--batch-size", config.batch_size),
                          ("--max-question-length", config.max_question_length),
                          ("--top-answers", config.top_answers)):
        if value < (0 if option == "--limit" else 1):
            raise VQAError(f"{option} must be at least 1, not {value}.")


def check_import_files(config: PreprocessConfig) -> None:
    """The grid and .mat files to import opened and their datasets and shapes checked, reading no features: a bad
    file is said now, not after the text steps and minutes of extraction."""
    if config.grid_features:
        from vqa import grid_import

        grid_import.check_pytorch_vqa(config.grid_features)
    if config.features_mat:
        from vqa import matfile

        matfile.check_mat_features(config.features_mat, config.id_map)


def check_feature_options(config: PreprocessConfig) -> None:
    """--features, --image-size and --grid-layer against each other and the import options, in one sentence."""
    features, size = extracted(config), config.image_size
    if config.features not in FEATURE_CHOICES:
        raise VQAError(f"--features must be one of {', '.join(FEATURE_CHOICES)}, not {config.features!r}.")
    if not (size == 0 or 32 <= size <= 4096):
        raise VQAError(f"--image-size must be 0 (the backbone's own size) or from 32 to 4096, not {size}.")
    grids = features in ("grid", "both")
    if config.features_mat and grids:
        raise VQAError(f"--features {features} extracts grid features from the images, which --features-mat cannot "
                       "give; drop --features-mat, or pass --features fc7 to import the .mat file.")
    if config.features_mat and size:
        raise VQAError("--image-size sets the size images are extracted at, but --features-mat imports features "
                       "instead: drop one.")
    if config.grid_features and grids:
        raise VQAError(f"--grid-features imports grid features while --features {features} extracts them: pass one "
                       "(--grid-features goes with --features fc7).")
    if config.grid_layer and not grids:
        raise VQAError(f"--grid-layer {config.grid_layer} names the layer of extracted grid features; add --features "
                       "grid or both, or drop it.")
    if features == "none" and (size or config.grid_layer):
        raise VQAError("--image-size and --grid-layer set how features are extracted from the images, but this "
                       "run extracts none (--features none, or auto with only imports); drop them or pass --features.")
    vgg16 = not config.weights.endswith(".keras")
    if vgg16 and size not in (0, 224) and features not in ("grid", "none"):
        raise VQAError(f"--image-size {size} leaves VGG-16 without fc7 features (its fully connected layers take "
                       f"224 x 224 images only); pass --features grid for {size} x {size} grids, or drop --image-size.")


def extracted(config: PreprocessConfig) -> str:
    """What extraction from the images keeps: ``features``, with "auto" as "fc7", or "none" when the
    run imports its image input instead (grids, regions, or the .mat fc7 rows)."""
    if config.features != "auto":
        return config.features
    return "none" if (config.grid_features or config.regions or config.features_mat) else "fc7"
