"""What every benchmark section shares: the work sizes, the targets, and the fixed shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
MAX_QUESTION_LENGTH = 25
WORD_VECTOR_DIM = 300  # en_core_web_lg / GloVe, what the blog post stored per token
NUM_ANSWERS = 1000

TARGETS = {  # the minimum for each section's headline ratio
    "questions": 100.0,  # speedup
    "question_storage": 100.0,  # bytes of per-token vectors / bytes of token ids
    "features": 0.85,  # end-to-end / forward-only images per second
    "training": 0.9,  # pipeline / in-memory samples per second
    "grid": 0.9,  # grids streamed from the grid file / the same batches in memory, samples per second
    "grid_memory": 1.1,  # peak training RSS at 4x the images / at 1x (at most)
    "grid_extraction": 0.9,  # files -> feature and grid files / forward pass in memory, images per second
    "regions": 0.95,  # regions streamed from the region file / the same batches in memory, samples per second
    "regions_memory": 1.1,  # peak training RSS at 4x the images / at 1x, on regions (at most)
    "learning": 0.97,  # a registered model's val VQA accuracy with its own recipe / the reference recipe's
    "serve": 3.0,  # vqa serve requests per second, 8 concurrent clients / 1 (micro-batching)
    "serve_cache": 2.0,  # ms per request about a new image / a repeated one (the feature cache)
    "serve_memory": 1.1,  # server RSS after / before the memory phase's requests (at most)
}


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``QUICK`` is the smoke-test version."""

    questions: int = 5000
    naive_questions: int = 300  # the full pipeline is slow: measured on these, reported as a rate
    images: int = 32
    image_batch: int = 16
    feature_rounds: int = 2  # alternating forward-only and end-to-end passes
    backbone: str = "vgg16"  # "vgg16" (random weights, the real architecture) or "stand-in" (a small CNN)
    train_questions: int = 20_000
    train_images: int = 2_000
    train_batch: int = 256
    train_rounds: int = 3  # timed epochs each way, after one untimed (tracing) epoch each
    # The default architecture, narrower: feeding is a larger share of a light model's step, so
    # this is a harder test of the pipeline than the full-width model, and fits the time budget.
    model: tuple[tuple[str, Any], ...] = (("name", "deeper-lstm-norm-i"), ("lstm_units", 64),
                                          ("lstm_layers", 1), ("hidden_units", 256), ("fusion_units", 256))
    predict_repeats: int = 5
    predict_questions: int = 16
    predict_images: int = 4  # VQA v2 asks about 5 questions per image
    scale_questions: int = 5_000  # preprocessing at 1x; the 4x run has four times as many questions
    # Section grid: an attention model on grids streamed from the grid file. One question per image,
    # so an epoch reads every grid; the memory point at 4x has four times the images (float16
    # 7 x 7 x 512 = 49 KiB each: 8192 images are a 412 MB file, about four times the 10% of a
    # training process's ~1 GB RSS that 4x may add).
    grid_images: int = 2048
    grid_shape: tuple[int, int, int] = (7, 7, 512)  # VGG-16 block5_pool at 224 px
    grid_batch: int = 256
    grid_rounds: int = 2  # timed epochs each way (streamed, in memory), after one untimed epoch each
    grid_model: tuple[tuple[str, Any], ...] = (("name", "multi-glimpse"), ("lstm_units", 64), ("lstm_layers", 1),
                                               ("hidden_units", 128), ("fusion_units", 128))
    grid_extraction_images: int = 16  # image files -> fc7 and grid files in one pass (``backbone``)
    grid_extraction_batch: int = 8
    grid_extraction_rounds: int = 3  # alternating forward-only and end-to-end passes
    # Section regions: an attention model on bottom-up regions streamed from the region file, one question
    # per image. Adaptive 10-100 boxes of 2048-d float16 (about 225 KB an image): 4x is a ~920 MB file,
    # several times the 10% of the training process's RSS that 4x may add.
    region_images: int = 1024
    region_boxes: tuple[int, int] = (10, 100)  # box count per image, uniform in [low, high]
    region_dim: int = 2048
    region_batch: int = 128
    region_rounds: int = 2  # timed epochs each way (streamed, in memory), after one untimed epoch each
    region_model: tuple[tuple[str, Any], ...] = (("name", "multi-glimpse"), ("lstm_units", 64), ("lstm_layers", 1),
                                                 ("hidden_units", 128), ("fusion_units", 128))
    # Section region_models: mcan against updown on the same batches of synthetic regions (in memory), at the
    # registered recipes' widths (() = as registered: MCAN-small, Up-Down 1024), and one question on a run of each.
    # Sized for a GPU: a training step of MCAN-small on 64 x 100 boxes is about 1 TFLOP (counted, not timed).
    region_models_steps: int = 8  # timed steps each model, per round
    region_models_batch: int = 64  # MCAN-small's recipe batch, for both models
    region_models_boxes: tuple[int, int] = (10, 100)
    region_models_dim: int = 2048
    region_models_rounds: int = 2  # timed epochs each model, alternating, after one untimed epoch each
    region_models_widths: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # (model, model settings)
    region_models_predict_repeats: int = 5  # timed questions each run, after one untimed
    # Section learning: every registered model with its own recipe against a reference recipe, on the three
    # small datasets of vqa.bench.learning_data at 1x and 4x the train questions (val stays the same).
    learning_train_questions: int = 2000
    learning_val_questions: int = 1000
    # (dataset, models): () = every registered model whose inputs the dataset gives.
    learning_datasets: tuple[tuple[str, tuple[str, ...]], ...] = (("scenes-regions", ()), ("fc7-scenes", ()),
                                                                  ("grid-shapes", ()))
    learning_factors: tuple[int, ...] = (1, 4)
    learning_reference_epochs: int = 20
    # Only the smoke test changes a recipe: () trains each model exactly as its recipe says; the quick run
    # narrows the models and trains fewer epochs, so its ratios say nothing about learning.
    learning_model: tuple[tuple[str, Any], ...] = ()
    learning_epochs: int = 0  # 0 = the recipe's
    learning_small_features: bool = False  # narrower features in the datasets (the smoke test)
    # Section serve: requests to a `vqa serve` child process on 127.0.0.1, bounded counts.
    serve_warmup_requests: int = 48
    serve_single_requests: int = 150  # one client
    serve_concurrent_requests: int = 400  # serve_clients at once
    serve_clients: int = 8
    serve_cache_requests: int = 24  # each way: repeated image, new images
    serve_memory_requests: int = 500
    serve_memory_images: int = 16  # the pool the memory phase cycles through


FULL = Sizes()
QUICK = Sizes(questions=300, naive_questions=10, images=4, image_batch=2, feature_rounds=1, backbone="stand-in",
              train_questions=600, train_images=60, train_batch=64, train_rounds=1,
              model=(("name", "deeper-lstm-norm-i"), ("lstm_units", 8), ("lstm_layers", 1),
                     ("hidden_units", 16), ("fusion_units", 16)),
              predict_repeats=2, predict_questions=4, predict_images=2, scale_questions=200,
              grid_images=64, grid_shape=(2, 2, 16), grid_batch=32, grid_rounds=1,
              grid_model=(("name", "multi-glimpse"), ("lstm_units", 8), ("lstm_layers", 1), ("hidden_units", 16),
                          ("fusion_units", 16)),
              region_images=48, region_boxes=(2, 12), region_dim=32, region_batch=16, region_rounds=1,
              region_model=(("name", "multi-glimpse"), ("lstm_units", 8), ("lstm_layers", 1), ("hidden_units", 16),
                            ("fusion_units", 16)),
              region_models_steps=3, region_models_batch=8, region_models_boxes=(2, 8), region_models_dim=16,
              region_models_rounds=1, region_models_predict_repeats=3,
              region_models_widths=(("mcan", (("hidden_units", 16), ("heads", 2), ("layers", 1), ("ff_units", 32),
                                              ("flat_units", 16))),
                                    ("updown", (("hidden_units", 16),))),
              # One model a dataset, each reference kind once (regions, vector, grid), at 1x only: every
              # training costs seconds of tracing whatever its size.
              learning_train_questions=60, learning_val_questions=40, learning_reference_epochs=2,
              learning_datasets=(("scenes-regions", ("multi-glimpse",)), ("fc7-scenes", ("deeper-lstm-norm-i",)),
                                 ("grid-shapes", ("san",))), learning_factors=(1,),
              learning_model=(("lstm_units", 8), ("lstm_layers", 1), ("hidden_units", 16), ("fusion_units", 16)),
              learning_epochs=2, learning_small_features=True,
              grid_extraction_images=4, grid_extraction_batch=2, grid_extraction_rounds=1,
              serve_warmup_requests=16, serve_single_requests=24, serve_concurrent_requests=48,
              serve_cache_requests=4, serve_memory_requests=48, serve_memory_images=4)
