"""The tools that build, measure and ship the built-in world's own networks: the base model
(:mod:`b4m.harness.base`) and the judges (:mod:`b4m.harness.judges`).

They sit above the world, diffusion and eval layers and below the command line (``b4m base ...``,
``b4m judges ...``); the scripts in ``benchmarks/`` are thin shells over them. Importing a module here loads
neither torch nor diffusers (the command line builds its ``--help`` from the configs); the jobs import them
when they run.
"""
