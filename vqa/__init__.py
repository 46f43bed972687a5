"""Visual question answering on VQA v2 / MS-COCO with Keras 3.

Data flows one way, each step writing files the next one reads:
official JSON + COCO images -> text files, token ids, answer targets and image
features (``vqa.preprocess``) -> a trained run (``vqa.train``) -> a results
JSON scored with the official metric (``vqa.evaluate``, ``vqa.metric``).
"""

__version__ = "0.1.0"
