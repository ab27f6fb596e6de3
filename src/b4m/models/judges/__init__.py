"""World judges: small CNNs that stand in for DINOv2 (content) and CLIP (style, prompt) on the synthetic world.

One convolutional trunk (three stages, 32 -> 16 -> 8 px) feeds

- a content embedding and a style embedding: global-average-pooled trunk features (for style, their mean
  and standard deviation) through separate linear projections, L2-normalised. Each is trained through a cosine classifier (NormFace; Wang et al. 2017):
  ``logits = s * <normalize(f), normalize(w_k)>`` with ``s = 16``, so cosine similarity between embeddings is what
  the classifiers rank by: images of the same content in different styles map close together in content space,
  and images of the same style over different contents close together in style space.
- one spatial head per attribute (position, size, background): a 1x1 conv to 8 channels on the 8 x 8 map,
  flattened, so that position and size are not lost to global pooling.

Training uses fresh renders of *all* contents and styles (held-out ones included; the judges must score them)
with uniform attributes, and augmentation that mimics a generator's flaws: shifts of up to 2 px, Gaussian blur,
Gaussian noise. Mild brightness/contrast jitter is applied to half of each batch, whose samples then train only
the content head, so colour stays a clean cue for style and background.

Shipped weights live in ``b4m/assets/judges`` (``judges.safetensors`` + ``judges.json``, which records the
concept names, the architecture and the metrics measured after training). Retrain with
``b4m judges train`` (or ``python benchmarks/judges.py``); the recipe is
:class:`~b4m.models.judges.config.JudgesTrainConfig`.

One module per job:

- :mod:`~b4m.models.judges.config`: the training recipe and where the shipped judges live (no torch);
- :mod:`~b4m.models.judges.network`: :class:`~b4m.models.judges.network.WorldJudges`, its files, warm starts;
- :mod:`~b4m.models.judges.data`: scene sampling, rendering and labels;
- :mod:`~b4m.models.judges.augment`: the evaluation perturbation and the training augmentation;
- :mod:`~b4m.models.judges.train`: :func:`~b4m.models.judges.train.train_judges`;
- :mod:`~b4m.models.judges.evaluate`: :func:`~b4m.models.judges.evaluate.evaluate_judges`.

Importing this package loads no torch.
"""
