"""``b4m bench``: the paper's comparison protocol (B4M, Xu et al., ACM TOG 2025, Sec. 5, Table 1, Fig. 11) on the
built-in world: every method of the registry and every B4M ablation arm, on the same references, the same source
adapters and the same seeds, scored by the world's judges with bootstrap intervals.

- :mod:`b4m.bench.catalogue`: the tracks, pairs, arms and the :class:`~b4m.bench.catalogue.BenchConfig` (no torch);
- :mod:`b4m.eval.stats` (shared with ``b4m eval``): bootstrap intervals over images and over pairs;
- :mod:`b4m.bench.run`: the protocol (export, fit, sample, score; cached per run, so it resumes), one module per
  job under it: :mod:`~b4m.bench.runs` (the plan's runs and cache keys), :mod:`~b4m.bench.folder` (``--out``, the
  ``done.json`` records), :mod:`~b4m.bench.context` (the shared pipeline, judges, references),
  :mod:`~b4m.bench.fit` (sources, B4M's stages, the ``rp-sgd`` rate), :mod:`~b4m.bench.execute` (one run),
  :mod:`~b4m.bench.results` (rows, aggregation), :mod:`~b4m.bench.shards` (several processes);
- :mod:`b4m.bench.report`: ``results.md`` (Table-1 layout) and the self-contained ``report.html``;
- ``--pairs-file``: :mod:`b4m.bench.pairs_file` (your content and style folders, pairs and prompts, on a real base
  model, scored by :mod:`b4m.eval.protocol`: DINOv2, CLIP and CSD), :mod:`b4m.bench.costs` (``--dry-run``: fits
  after reuse, images, GPU hours) and :mod:`b4m.bench.resources` (each run's wall time and peak memory); the same
  runs, cache, shards and reports as the built-in world.
"""
