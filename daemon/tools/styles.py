"""Style presets (prompt templates) and style batches: one subject across styles and seeds.

A style is a prompt template with a ``{subject}`` slot and an optional negative prompt. Built-ins
are registered below exactly as the user's own are read from ``<config dir>/styles.toml``, one
table per style (a user style of the same name replaces the built-in)::

    [noir]
    prompt = "{subject}, film noir still, hard shadows, black and white"
    negative = "colour, cartoon"
    description = "1940s crime film"

A style batch runs every chosen style over the same seeds, so a contact sheet's columns compare styles
at equal seeds:

    >>> styles = builtin_styles()
    >>> styles["watercolour"].render("Albert Einstein")
    'Albert Einstein, watercolour painting, soft washes of colour, paper texture'
    >>> plan_style_batch([styles["photo"], styles["watercolour"]], n=5)
    [3, 2]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pennello.errors import ConfigError, RequestError

STYLES_FILE = "styles.toml"
SUBJECT = "{subject}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # contains {subject}
    negative: str = ""
    description: str = ""
    builtin: bool = True

    def render(self, subject: str) -> str:
        return self.prompt.replace(SUBJECT, subject.strip())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prompt": self.prompt, "negative": self.negative,
                "description": self.description, "builtin": self.builtin}


_BUILTIN: dict[str, Style] = {}


def register_style(style: Style) -> Style:
    if SUBJECT not in style.prompt:
        raise ValueError(f"style {style.name!r}: the prompt needs a {SUBJECT} slot")
    _BUILTIN[style.name] = style
    return style


for _name, _prompt, _negative, _description in (
    ("photo", "{subject}, photograph, natural light, 50mm lens, sharp focus", "drawing, painting, cartoon",
     "A natural photograph"),
    ("watercolour", "{subject}, watercolour painting, soft washes of colour, paper texture", "photo",
     "Loose watercolour on paper"),
    ("oil-painting", "{subject}, oil painting on canvas, visible brush strokes, rich colours", "photo",
     "Classical oil painting"),
    ("pencil-sketch", "{subject}, pencil sketch, graphite on paper, cross-hatching", "colour, photo",
     "Graphite drawing"),
    ("ink-line-art", "{subject}, clean ink line art, black on white, minimal", "colour, shading",
     "Black-and-white line drawing"),
    ("anime", "{subject}, anime illustration, cel shading, vibrant colours", "photo, realistic",
     "Japanese animation style"),
    ("pixel-art", "{subject}, 16-bit pixel art, limited palette", "blurry, photo", "Retro game sprite"),
    ("pop-art", "{subject}, pop art, bold flat colours, halftone dots, comic style", "photo",
     "1960s pop art print"),
    ("cinematic", "{subject}, cinematic film still, dramatic lighting, shallow depth of field", "cartoon",
     "A frame from a film"),
    ("3d-render", "{subject}, 3D render, soft studio lighting, octane, smooth materials", "drawing, photo",
     "Clean 3D render"),
    ("art-nouveau", "{subject}, art nouveau poster, flowing lines, ornamental border, muted palette",
     "photo", "Mucha-style poster"),
    ("stained-glass", "{subject}, stained glass window, lead lines, luminous colours", "photo",
     "Church window"),
):
    register_style(Style(_name, _prompt, _negative, _description))


def builtin_styles() -> dict[str, Style]:
    return dict(_BUILTIN)


def load_styles(config_dir: Path) -> dict[str, Style]:
    """Built-ins plus ``<config_dir>/styles.toml`` (which wins on equal names), in that order.

    Raises:
        ConfigError: the file is not valid TOML, or a style lacks a prompt with ``{subject}`` or
            has unknown keys.
    """
    styles = builtin_styles()
    path = config_dir / STYLES_FILE
    if not path.exists():
        return styles
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table with a prompt")
        unknown = set(table) - {"prompt", "negative", "description"}
        if unknown:
            raise ConfigError(f"{path}: [{name}] has unknown key(s) {sorted(unknown)}; "
                              f"known: prompt, negative, description")
        prompt = table.get("prompt")
        if not isinstance(prompt, str) or SUBJECT not in prompt:
            raise ConfigError(f"{path}: [{name}] needs prompt = \"... {SUBJECT} ...\"")
        if not all(isinstance(table.get(key, ""), str) for key in ("negative", "description")):
            raise ConfigError(f"{path}: [{name}] negative and description must be strings")
        styles[name] = Style(name, prompt, table.get("negative", ""), table.get("description", ""),
                             builtin=False)
    return styles


def choose_styles(available: dict[str, Style], wanted: list[str] | int) -> list[Style]:
    """Styles by name, or the first ``wanted`` ones (built-ins in their order, then the user's).

    Raises:
        RequestError: naming ``styles`` for an unknown name, a repeat, or a count out of range.
    """
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if not 1 <= wanted <= len(available):
            raise RequestError(f"styles must be from 1 to {len(available)} (the presets there are)",
                               field="styles")
        return list(available.values())[:wanted]
    if not isinstance(wanted, list) or not wanted or not all(isinstance(name, str) for name in wanted):
        raise RequestError("styles must be a number or a non-empty list of style names", field="styles")
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise RequestError(f"unknown style(s): {', '.join(unknown)}; GET /api/styles lists them",
                           field="styles")
    if len(set(wanted)) != len(wanted):
        raise RequestError("styles lists a style twice", field="styles")
    return [available[name] for name in wanted]


def plan_style_batch(styles: list[Style], n: int) -> list[int]:
    """How many pictures each style gets: ``n`` spread as evenly as possible, earlier styles first."""
    return [n // len(styles) + (1 if i < n % len(styles) else 0) for i in range(len(styles))]
