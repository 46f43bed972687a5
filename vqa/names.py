"""The names every module agrees on: model inputs and the HDF5 datasets of the pipeline's files.

A model's inputs are looked up by these names in train, evaluate, predict and serve, and
the file owners (``vqa.features``, ``vqa.grid_features``, ``vqa.regions``) store their
arrays under the dataset keys below; nothing else spells them.
"""

# Model inputs.
QUESTION_IDS = "question_ids"  # int32 (batch, max_length), post-padded with 0
IMAGE_FEATURES = "image_features"  # float32 (batch, D): one vector per image
IMAGE_GRID = "image_grid"  # float32 (batch, H, W, C): a backbone's spatial grid
REGION_FEATURES = "region_features"  # float32 (batch, K, D): one vector per box (K varies per batch)
REGION_GEOMETRY = "region_geometry"  # float32 (batch, K, 5): x1/w, y1/h, x2/w, y2/h, area/(w*h)
REGION_MASK = "region_mask"  # float32 (batch, K): 1 for a real box, 0 for padding

# HDF5 datasets of the feature files.
H5_IMAGE_IDS = "image_ids"  # int64 (N,): the image of each row
H5_FEATURES = "features"  # the rows: (N, D), (N, H, W, C) or (total_boxes, D)
H5_OFFSETS = "offsets"  # int64 (N + 1,): image i's boxes are rows offsets[i]:offsets[i + 1]
H5_BOXES = "boxes"  # float32 (total_boxes, 4): x1, y1, x2, y2 in pixels
H5_IMAGE_SIZES = "image_sizes"  # float32 (N, 2): width, height in pixels
