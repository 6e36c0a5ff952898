"""The parts of ``packaging/train_embedded_model.py``, which trains ``pennello-tiny``.

* :mod:`.scenes`: the synthetic data: scenes of one coloured shape, drawn and captioned, and
  the split into training scenes and held-out ones;
* :mod:`.checker`: reads the main object's colour, shape and place back from the pixels, and
  scores a pipeline on held-out prompts with it;
* :mod:`.autoencoder`: the training renders as VAE input, the pinned latent space, and the VAE
  and decoder training stages;
* :mod:`.denoiser`: the UNet and text encoder training stage.

The script itself holds the command line and the order of the stages.
"""
