"""The built-in base text-to-image model of the world: b4m's small stand-in for SDXL.

It is an ordinary Stable Diffusion pipeline made of stock diffusers/transformers classes, only small:

- ``vae``: :class:`diffusers.AutoencoderKL`, 32×32×3 images ↔ 16×16×12 latents (f = 2), trained first as a
  plain autoencoder with a tiny KL term; ``scaling_factor`` makes the latents roughly unit-variance. Twelve
  channels (not SD's four) because the world's styles are pixel-scale textures: with four channels and the
  few thousand steps that fit the CPU budget the judges recognised only ~77 % of reconstructed styles
  (dots 48 %), a ceiling below the quality bar; 2×2×3 = 12 values per latent pixel leaves room for them.
- ``text_encoder``: :class:`transformers.CLIPTextModel` from a small :class:`CLIPTextConfig`, trained jointly
  with the UNet so that it learns the world's words.
- ``tokenizer``: a :class:`transformers.CLIPTokenizer` built offline by :mod:`b4m.models.base.tokenizer`: one
  token per caption word, and characters for anything else (trigger words such as ``snq``).
- ``unet``: :class:`diffusers.UNet2DConditionModel` with the SDXL block layout
  (``DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D``), so its attention layers expose
  ``to_q, to_k, to_v, to_out.0`` like SD/SDXL.
- ``scheduler``: DDPM noise schedule for training (ε-prediction, ``linear`` betas, whose terminal SNR is close
  to zero and so avoids the colour drift of a leaky schedule on small images); the folder ships an Euler
  sampler with ``trailing`` timestep spacing.

The folder written by :func:`b4m.models.base.train.train_base_model` loads with
``DiffusionPipeline.from_pretrained(path)`` with no custom code, and ``load_lora_weights`` works on it as on any
SD 1.x pipeline. Training follows DDPM (Ho et al. 2020, Eq. 14, the simple ε loss) in the latent space of LDM
(Rombach et al. 2022), with classifier-free guidance dropout of the caption (Ho & Salimans 2022, §3.2) and an
exponential moving average of the weights. Only held-in contents and styles are rendered for training; held-out
ones never are (checked with asserts).

One module per job:

- :mod:`~b4m.models.base.config`: the architecture and training settings (:class:`BaseModelConfig`; no torch);
- :mod:`~b4m.models.base.tokenizer`: the offline word-level tokenizer;
- :mod:`~b4m.models.base.build`: untrained components and pipelines, and loading earlier weights into them;
- :mod:`~b4m.models.base.data`: the world's vocabulary, the rendered training pool, caption fillers, latents;
- :mod:`~b4m.models.base.phases`: the two training phases (autoencoder, then UNet and text encoder, with
  diffusers' ``EMAModel`` and ``compute_snr``);
- :mod:`~b4m.models.base.train`: a whole resumable run (:func:`~b4m.models.base.train.train_base_model`);
- :mod:`~b4m.models.base.ship`: writing a pipeline folder with its ``b4m_base.json``;
- :mod:`~b4m.models.base.sample`: sampling images from prompts;
- :mod:`~b4m.models.base.evaluate`: the judge-measured quality report.

Where the shipped folder lives, its recommended settings and how it loads are the diffusion layer's
(:mod:`b4m.diffusion.builtin_base`). Importing this package loads neither torch nor diffusers.
"""
