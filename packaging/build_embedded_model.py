"""Build ``pennello-tiny``, the small text-to-image model shipped inside the package.

It is a complete diffusers ``StableDiffusionPipeline`` (CLIP text encoder, UNet, VAE, Euler
scheduler with v-prediction) of about 5 MB, so that ``pennello install pennello-tiny`` works with
no download and the tests can run a real pipeline on a CPU in a fraction of a second. This module
defines its architecture: :func:`build_pipeline` makes it with seeded random weights and
:func:`save_pipeline` writes it. ``packaging/train_embedded_model.py`` trains it in between
(coloured shapes on plain backgrounds, drawn as asked) and is what writes the shipped copy::

    nice -n 19 python packaging/train_embedded_model.py   # trains, checks, writes installer/embedded/pennello-tiny/
    python packaging/sign_catalog.py                      # re-hashes and re-signs manifests/

Running this script alone writes the *untrained* pipeline, and only to an ``--out`` you name
(it would otherwise replace the trained model)::

    python packaging/build_embedded_model.py --out /tmp/pennello-tiny-untrained

Every random draw is seeded, so the same environment (torch, diffusers, transformers,
tokenizers versions) writes the same bytes on every run. Other versions may write different
config bytes (``_diffusers_version``, ``transformers_version``); the signed manifest pins
whichever bytes ship, so rebuild and re-sign together.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from tokenizers import pre_tokenizers
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

log = logging.getLogger("build_embedded_model")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "installer" / "embedded" / "pennello-tiny"
SEED = 20260101
IMAGE_SIZE = 64  # pixels
VAE_SCALE = 4  # the VAE downsamples twice, so latents are 16x16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77  # CLIP's context length, which diffusers' prompt handling expects
BPE_MERGES = 400

# The words the tokenizer's merges are learned from: the vocabulary of simple picture prompts.
WORDS = """
a an the of and with in on at under over behind near by from to for under above beside
red orange yellow green blue purple pink brown black white gray grey gold silver dark light
bright pale colorful vivid pastel neon warm cool soft sharp
circle square triangle star heart line dot stripe grid wave spiral shape pattern
cat dog bird fish horse cow sheep rabbit fox bear lion tiger owl butterfly dragon
tree flower rose grass leaf forest garden mountain hill river lake sea ocean beach island
sky cloud sun moon stars rain snow storm fog sunset sunrise night day morning evening
house castle tower bridge road street city village window door roof wall room kitchen
car boat ship train plane bicycle robot lamp chair table cup book clock key
man woman child person girl boy face portrait hand eye smile hat dress
painting photo photograph drawing sketch watercolor oil illustration cartoon anime pixel art
style detailed simple minimal abstract realistic cinematic studio lighting background
small big large tiny huge tall old new happy sad calm quiet lonely
""".split()


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges are learned from :data:`WORDS` (no download).

    The vocabulary is laid out as CLIP's is: the 256 byte symbols, the same with the
    end-of-word mark, then one token per merge, then the two special tokens, so any text
    tokenizes (unknown words fall apart into bytes).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = alphabet + [ch + "</w>" for ch in alphabet]
    # Train with CLIP's own normalizer and pre-tokenizer by training its backend in place.
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(base + [BOS, EOS])}, merges=[])
    backend = tokenizer.backend_tokenizer
    # Listing the end-of-word symbols up front fixes their ids; the trainer would otherwise
    # number them in hash-map order and break count ties differently on every run
    # (huggingface/tokenizers#1794).
    trainer = BpeTrainer(vocab_size=len(base) + BPE_MERGES, show_progress=False,
                         initial_alphabet=alphabet, special_tokens=base[len(alphabet):],
                         end_of_word_suffix="</w>", min_frequency=1)
    backend.train_from_iterator([" ".join(WORDS)] * 3, trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    tokens = base + ["".join(pair) for pair in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens + [BOS, EOS]))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, projection_dim=32,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_SCALE, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
        # The prompt, pooled, is also added to the timestep embedding, so every ResNet (the 16x16
        # ones included, which have no cross-attention) sees the colours asked for.
        addition_embed_type="text", addition_embed_type_num_heads=2)


def build_vae() -> AutoencoderKL:
    # Three blocks = two downsamples: 64x64 pixels <-> 4x16x16 latents. Training pins latent
    # channels 0-2 to the picture averaged over 4x4 pixels (see train_embedded_model.py).
    return AutoencoderKL(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3)


def build_scheduler() -> EulerDiscreteScheduler:
    # "trailing" spacing is what makes 1-4 step sampling start from pure noise (as SD-Turbo does).
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, timestep_spacing="trailing",
                                  steps_offset=1, prediction_type="v_prediction")


def build_pipeline(seed: int = SEED) -> StableDiffusionPipeline:
    """The untrained pipeline: same seed, same weights, on any machine with the same torch."""
    tokenizer = build_tokenizer()
    components = {}
    # Seed each part on its own so changing one part's shape leaves the others' weights alone.
    for offset, (name, build) in enumerate((("text_encoder", lambda: build_text_encoder(tokenizer)),
                                            ("unet", build_unet), ("vae", build_vae))):
        torch.manual_seed(seed + offset)
        components[name] = build().eval()
    return StableDiffusionPipeline(
        tokenizer=tokenizer, scheduler=build_scheduler(), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False, **components)


def _reset_tokenizer_state(tokenizer: CLIPTokenizer) -> None:
    # Each call leaves its padding and truncation settings in the backend, which would then be
    # saved: put back what a new CLIPTokenizer has, so the bytes do not depend on the last call.
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)


def _drop_load_paths(saved: Path) -> None:
    # diffusers records where a part was loaded from ("/tmp/run/final/unet"): a build machine's
    # path has no place in shipped, signed files.
    for config in saved.rglob("*.json"):
        data = json.loads(config.read_text())
        if isinstance(data, dict) and data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_pipeline(pipe: StableDiffusionPipeline, out: Path) -> None:
    """Write the pipeline to ``out``, replacing what was there only once the new copy is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / out.name
        _reset_tokenizer_state(pipe.tokenizer)
        pipe.save_pretrained(staged, safe_serialization=True)
        _drop_load_paths(staged)
        # safetensors writes 0600; a wheel keeps modes, and other users must be able to read these.
        for path in staged.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The shipped model is trained: see packaging/train_embedded_model.py.")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output directory for the untrained pipeline (the shipped, trained one is {DEFAULT_OUT}, "
                             "written by train_embedded_model.py)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed for every random weight")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pipe = build_pipeline(args.seed)
    save_pipeline(pipe, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    log.info("wrote %s (%.2f MB, untrained)", args.out, total / 1e6)


if __name__ == "__main__":
    main()
