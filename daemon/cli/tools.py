"""``pennello enhance``, ``pennello upscale`` and ``pennello edit``: picture tools on the daemon.

Like ``pennello generate`` they talk to the daemon over HTTP only (``--url``, ``--token``,
``--remote`` work the same), upload the file, and save the result next to it or in ``--out``:

    $ pennello enhance photo.png                 # photo-enhanced.png, with before/after metrics
    $ pennello upscale photo.png --scale 4       # photo-x4.png (Lanczos; --method ai for the AI one)
    $ pennello edit photo.png "as a watercolour" --strength 0.6 --mask sky.png
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from pennello.cli_output import emit, json_output
from pennello.client import Client

from .core import _client, _remote
from .progress import daemon_progress

_TOOL_TIMEOUT_S = 600.0  # an 8x upscale or an edit on a CPU can take minutes
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _tool_client(remote: str | None, url: str | None, token: str | None) -> Client:
    client = _client(remote, url, token)
    client.timeout = max(client.timeout, _TOOL_TIMEOUT_S)
    return client


def _upload(client: Client, path: str, source: Path, fields: dict[str, Any],
            mask: Path | None = None, references: tuple[Path, ...] = ()) -> dict[str, Any]:
    """POST ``source`` (then each of ``references`` as a repeated ``image`` field, and ``mask``)."""
    data = {key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in fields.items() if value is not None}
    with ExitStack() as stack:
        files: list[tuple[str, Any]] = [("image", (p.name, stack.enter_context(p.open("rb"))))
                                        for p in (source, *references)]
        if mask is not None:
            files.append(("mask", (mask.name, stack.enter_context(mask.open("rb")))))
        return client.call("POST", path, files=files, data=data)


def _save(client: Client, image: dict[str, Any], source: Path, suffix: str, out: Path | None) -> Path:
    directory = out or source.parent
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.stem}-{suffix}.{_EXTENSIONS[image['format']]}"
    target.write_bytes(client.image_bytes(image["id"]))
    return target


def _metrics(m: dict[str, float]) -> str:
    return f"contrast {m['contrast_spread']:.2f}, sharpness {m['sharpness']:.0f}"


_out_option = click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                           help="Directory for the result (default: next to FILE).")
_format_option = click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png",
                              show_default=True)


@click.command()
@click.argument("file", type=_FILE)
@_format_option
@_out_option
@_remote
def enhance(file: Path, fmt: str, out: Path | None, remote: str | None, url: str | None,
            token: str | None) -> None:
    """Correct a picture's contrast and sharpness where they fall short, and save the result.

    Prints the measurements before and after (contrast spread 0-1, sharpness as the variance of
    the Laplacian) and which corrections were applied; a picture that needs none is kept as is.

    \b
      pennello enhance photo.png
      pennello enhance photo.jpg --format jpeg --out enhanced/
    """
    client = _tool_client(remote, url, token)
    with daemon_progress(client, "enhancing", as_json=False):
        result = _upload(client, "/api/enhance", file, {"format": fmt})
    target = _save(client, result["image"], file, "enhanced", out)
    click.echo(f"{target}  before: {_metrics(result['before'])}  after: {_metrics(result['after'])}  "
               f"applied: {', '.join(result['applied']) or 'nothing (already fine)'}")


@click.command()
@click.argument("file", type=_FILE)
@click.option("--scale", type=click.Choice(["2", "4", "8"]), default="2", show_default=True,
              help="How many times wider and taller.")
@click.option("--method", type=click.Choice(["lanczos", "ai"]), default="lanczos", show_default=True,
              help="lanczos: classical, always there; ai: the upscaler model from the signed catalog.")
@click.option("--enhance", "enhance_too", is_flag=True, help="Auto-enhance the result as well.")
@_format_option
@_out_option
@_remote
def upscale(file: Path, scale: str, method: str, enhance_too: bool, fmt: str, out: Path | None,
            remote: str | None, url: str | None, token: str | None) -> None:
    """Upscale a picture 2x, 4x or 8x (tile by tile, so 8x fits in memory) and save it.

    \b
      pennello upscale photo.png --scale 4
      pennello upscale photo.png --scale 8 --method ai   # needs `pennello install sd-x4-upscaler`
    """
    client = _tool_client(remote, url, token)
    with daemon_progress(client, "upscaling", as_json=False):
        result = _upload(client, "/api/upscale", file, {"scale": scale, "method": method, "format": fmt,
                                                        "enhance": enhance_too or None})
    target = _save(client, result["image"], file, f"x{scale}", out)
    note = result["upscale"]
    click.echo(f"{target}  {note['from']} -> {note['to']} ({note['method']})")


@click.command()
@click.argument("file", type=_FILE)
@click.argument("prompt")
@click.option("--mask", type=_FILE, help="Repaint only where this is transparent (or white).")
@click.option("--reference", "references", type=_FILE, multiple=True,
              help="Another input picture (repeatable) for models that take several, e.g. "
                   "qwen-image-edit: FILE is picture 1, the references pictures 2, 3.")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="How far the result may move from FILE.")
@click.option("-n", "n", type=int, default=1, show_default=True, help="How many pictures.")
@click.option("--seed", type=int, help="Seed of the first picture; the next ones use seed+1, seed+2…")
@click.option("--steps", type=int, help="Denoising steps before strength applies (default: the model's).")
@click.option("--negative", default="", help="What the picture should not contain.")
@click.option("--model", help="Installed model to use (default: the daemon's default).")
@click.option("--enhance", "enhance_too", is_flag=True, help="Auto-enhance the results as well.")
@_format_option
@_out_option
@_remote
def edit(file: Path, prompt: str, mask: Path | None, references: tuple[Path, ...], strength: float, n: int, seed: int | None,
         steps: int | None, negative: str, model: str | None, enhance_too: bool, fmt: str,
         out: Path | None, remote: str | None, url: str | None, token: str | None) -> None:
    """Redraw FILE following PROMPT (image-to-image), or only its masked part (inpainting).

    \b
      pennello edit photo.png "as a watercolour" --strength 0.6
      pennello edit photo.png "a red door" --mask door-mask.png -n 4 --seed 7
      pennello edit cat.png "the cat of picture 1 on the sofa of picture 2" --reference sofa.png \\
          --model qwen-image-edit
    """
    client = _tool_client(remote, url, token)
    fields = {"prompt": prompt, "strength": strength, "n": n, "seed": seed, "steps": steps,
              "negative_prompt": negative or None, "model": model, "format": fmt,
              "enhance": enhance_too or None}
    with daemon_progress(client, "editing", as_json=False):
        result = _upload(client, "/api/edit", file, fields, mask=mask, references=references)
    how = result["mode"] if result["strength"] is None else f"{result['mode']}, strength {result['strength']:g}"
    for image in result["images"]:
        target = _save(client, image, file, f"edit-{image['seed']}", out)
        click.echo(f"{target}  seed={image['seed']}  ({how})")


@click.command("copyright")
@click.argument("files", nargs=-1, required=True, type=_FILE)
@_remote
@json_output
def copyright_check(files: tuple[Path, ...], remote: str | None, url: str | None, token: str | None,
                    as_json: bool) -> None:
    """Compare pictures with the protected works in [copyright] reference_dir.

    Prints each file's closest matches (perceptual-hash distances, 0 = identical, of 64 bits).
    Exits with status 10 when any file is flagged, so scripts can act on it.

    \b
      pennello copyright poster.png
      pennello copyright outputs/2026-11-25/*.png
    """
    client = _tool_client(remote, url, token)
    notes = [(file, _upload(client, "/api/copyright/check", file, {})) for file in files]
    flagged = sum(1 for _, note in notes if note["flagged"])
    if as_json:
        emit({"files": [{"path": str(file), **note} for file, note in notes], "flagged": flagged})
    else:
        for file, note in notes:
            _print_copyright_note(file, note)
    if flagged:
        raise SystemExit(10)


def _print_copyright_note(file: Path, note: dict[str, Any]) -> None:
    if not note["flagged"]:
        click.echo(f"{file}  ok ({note['references']} references, none within {note['max_distance']} bits)")
    for match in note["matches"] if note["flagged"] else []:
        click.echo(f"{file}  FLAGGED: resembles {match['reference']} (pHash {match['phash_distance']}, "
                   f"dHash {match['dhash_distance']}{', mirrored' if match['mirrored'] else ''})")


def _parse_styles(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | list[str] | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    return [name.strip() for name in value.split(",") if name.strip()]


@click.command("batch")
@click.argument("subject")
@click.option("--styles", "chosen", callback=_parse_styles, metavar="N|NAME,NAME…",
              help="How many presets to use, or their names (see `pennello styles`). Default 4.")
@click.option("-n", "n", type=int, help="Pictures in all, spread over the styles (default one each).")
@click.option("--seed", type=int, help="First seed of every style (the same for all, to compare).")
@click.option("--negative", default="", help="Added to each style's negative prompt.")
@click.option("--model", help="Installed model to use (default: the daemon's default).")
@click.option("--enhance", "enhance_too", is_flag=True, help="Auto-enhance every picture.")
@_format_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory for the pictures and the contact sheet.")
@_remote
@json_output
def style_batch(subject: str, chosen: int | list[str] | None, n: int | None, seed: int | None,
                negative: str, model: str | None, enhance_too: bool, fmt: str, out: Path, remote: str | None,
                url: str | None, token: str | None, as_json: bool) -> None:
    """Draw SUBJECT in several styles over the same seeds, with a contact sheet.

    \b
      pennello batch "Albert Einstein" --styles 4 -n 20 --out einstein/
      pennello batch "a lighthouse" --styles watercolour,pixel-art,cinematic --seed 7
    """
    client = _tool_client(remote, url, token)
    body = {"subject": subject, "styles": chosen, "n": n, "seed": seed, "negative_prompt": negative or None,
            "model": model, "format": fmt, "enhance": enhance_too or None}
    with daemon_progress(client, "drawing the styles", as_json):
        result = client.call("POST", "/api/batch", json={k: v for k, v in body.items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    slug = "-".join(subject.lower().split())[:40] or "batch"
    report: dict[str, Any] = {"subject": subject, "seed": result["seed"], "styles": []}
    for style in result["styles"]:
        paths = []
        for image in style["job"]["images"]:
            target = out / f"{slug}-{style['name']}-{image['seed']}.{_EXTENSIONS[image['format']]}"
            target.write_bytes(client.image_bytes(image["id"]))
            paths.append({"path": str(target), "id": image["id"], "seed": image["seed"]})
        report["styles"].append({"name": style["name"], "prompt": style["prompt"], "images": paths})
        if not as_json:
            click.echo(f"{style['name']:<16} {len(style['job']['images'])} picture(s)  {style['prompt']}")
    sheet = out / f"{slug}-contact-sheet.png"
    sheet.write_bytes(client.image_bytes(result["contact_sheet"]["id"]))
    if as_json:
        emit({**report, "contact_sheet": str(sheet)})
    else:
        click.echo(f"{sheet}  (seeds {result['seed']}…)")


@click.command()
@_remote
def styles(remote: str | None, url: str | None, token: str | None) -> None:
    """List the style presets: built-ins and those in <config dir>/styles.toml."""
    client = _client(remote, url, token)
    for style in client.call("GET", "/api/styles")["styles"]:
        origin = "" if style["builtin"] else "  (styles.toml)"
        click.echo(f"{style['name']:<16} {style['description'] or style['prompt']}{origin}")


@click.group()
def pipeline() -> None:
    """Saved pipelines: generate → enhance → upscale → copyright check, by name.

    \b
      pennello pipeline save poster --prompt "{subject}, art nouveau poster" --enhance --upscale 4
      pennello pipeline run poster "a fox" --out posters/
      pennello pipeline list
    """


@pipeline.command("list")
@_remote
def pipeline_list(remote: str | None, url: str | None, token: str | None) -> None:
    """List the saved pipelines."""
    for saved in _client(remote, url, token).call("GET", "/api/pipelines")["pipelines"]:
        stages = ["generate"] + (["enhance"] if saved.get("enhance") else []) + \
            ([f"upscale x{saved['upscale']}"] if saved.get("upscale") else []) + \
            (["check"] if saved.get("check") else [])
        click.echo(f"{saved['name']:<16} {' -> '.join(stages)}  {saved['prompt']!r}")


@pipeline.command("save")
@click.argument("name")
@click.option("--prompt", required=True, help="The prompt; may hold {subject}, given at run time.")
@click.option("--negative", help="What the picture should not contain.")
@click.option("--model", help="Installed model (default: the daemon's default).")
@click.option("-n", "n", type=int, help="Pictures per run.")
@click.option("--seed", type=int, help="Seed of the first picture (random when absent).")
@click.option("--steps", type=int)
@click.option("--enhance", "enhance_too", is_flag=True, help="Auto-enhance each picture.")
@click.option("--upscale", "scale", type=click.Choice(["2", "4", "8"]), help="Upscale each picture.")
@click.option("--upscale-method", type=click.Choice(["lanczos", "ai"]))
@click.option("--check", is_flag=True, help="Require the copyright check and report its flags.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]))
@_remote
def pipeline_save(name: str, prompt: str, negative: str | None, model: str | None, n: int | None,
                  seed: int | None, steps: int | None, enhance_too: bool, scale: str | None,
                  upscale_method: str | None, check: bool, fmt: str | None, remote: str | None,
                  url: str | None, token: str | None) -> None:
    """Save (or replace) pipeline NAME on the daemon."""
    body = {"prompt": prompt, "negative_prompt": negative, "model": model, "n": n, "seed": seed,
            "steps": steps, "enhance": enhance_too or None, "upscale": int(scale) if scale else None,
            "upscale_method": upscale_method, "check": check or None, "format": fmt}
    saved = _client(remote, url, token).call("PUT", f"/api/pipelines/{name}",
                                             json={k: v for k, v in body.items() if v is not None})
    click.echo(f"saved pipeline {saved['name']}")


@pipeline.command("run")
@click.argument("name")
@click.argument("subject", required=False)
@click.option("--seed", type=int, help="Override the pipeline's seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory for the final pictures.")
@_remote
@json_output
def pipeline_run(name: str, subject: str | None, seed: int | None, out: Path, remote: str | None,
                 url: str | None, token: str | None, as_json: bool) -> None:
    """Run pipeline NAME (with SUBJECT for its {subject} slot) and save the final pictures.

    Exits with status 10 when the copyright check flagged a picture (it is saved all the same).
    """
    client = _tool_client(remote, url, token)
    with daemon_progress(client, f"running {name}", as_json):
        result = client.call("POST", f"/api/pipelines/{name}/run",
                             json={k: v for k, v in {"subject": subject, "seed": seed}.items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for image in result["images"]:
        target = out / f"{name}-{image['seed']}.{_EXTENSIONS[image['format']]}"
        target.write_bytes(client.image_bytes(image["id"]))
        flagged = image["id"] in result["copyright"]["flagged"]
        saved.append({"path": str(target), "id": image["id"], "seed": image["seed"], "width": image["width"],
                      "height": image["height"], "flagged": flagged})
        if not as_json:
            click.echo(f"{target}  {image['width']}x{image['height']}  seed={image['seed']}"
                       f"{'  FLAGGED by the copyright check' if flagged else ''}")
    if as_json:
        emit({"pipeline": name, "images": saved, "copyright": result["copyright"]})
    if result["copyright"]["flagged"]:
        raise SystemExit(10)


@pipeline.command("delete")
@click.argument("name")
@_remote
def pipeline_delete(name: str, remote: str | None, url: str | None, token: str | None) -> None:
    """Delete pipeline NAME."""
    _client(remote, url, token).call("DELETE", f"/api/pipelines/{name}")
    click.echo(f"deleted pipeline {name}")
