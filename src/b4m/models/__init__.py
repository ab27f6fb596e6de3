"""The built-in world's own networks: the base text-to-image model (:mod:`b4m.models.base`) and the judges
that score world images (:mod:`b4m.models.judges`).

This layer sits above the world (which renders the data they learn from), diffusion and train (the base trainer
reuses the resumable checkpoints of :mod:`b4m.train.checkpoint`) and below methods, eval and the harness that
trains, measures and ships them (:mod:`b4m.harness`). Importing this package, ``b4m.models.base``,
``b4m.models.judges`` or their ``config`` modules loads neither torch nor diffusers (the command line builds its
``--help`` from the configs); the other modules do.
"""
