"""How users name a result's look (backgrounds in English or Russian, colours), and the result buttons' data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from segmentation.effects import BLUR, TRANSPARENT, WHITE, Look, colour_rgb

# Words for the three named backgrounds, in both languages (lower case).
_NAMED = {
    WHITE: {"white", "белый", "белом", "бел"},
    BLUR: {"blur", "blurred", "размытие", "размытый", "размыть", "блюр"},
    TRANSPARENT: {"transparent", "none", "clear", "прозрачный", "прозрачность", "без фона"},
}
# Pillow knows the CSS colour names in English; these are the everyday ones in Russian.
_RUSSIAN_COLOURS = {
    "чёрный": "#000000",
    "черный": "#000000",
    "серый": "#808080",
    "красный": "#ff0000",
    "оранжевый": "#ffa500",
    "жёлтый": "#ffff00",
    "желтый": "#ffff00",
    "зелёный": "#008000",
    "зеленый": "#008000",
    "голубой": "#87ceeb",
    "синий": "#0000ff",
    "фиолетовый": "#800080",
    "розовый": "#ffc0cb",
    "коричневый": "#a52a2a",
}
# The Colour… button's palette: (emoji label, #rrggbb).
PALETTE = (
    ("⬛", "#000000"),
    ("🩶", "#9e9e9e"),
    ("🟥", "#e53935"),
    ("🟧", "#fb8c00"),
    ("🟨", "#fdd835"),
    ("🟩", "#43a047"),
    ("🟦", "#1e88e5"),
    ("🟪", "#8e24aa"),
)
MAX_COLOUR_TEXT = 40  # longer input is not a colour; don't hand it to the parser


def parse_background(text: str) -> str | None:
    """A background from what a user typed: transparent, white, blur or "#rrggbb"; None when it is not one."""
    value = " ".join(text.strip().lower().split())
    if not value or len(value) > MAX_COLOUR_TEXT:
        return None
    for background, words in _NAMED.items():
        if value in words:
            return background
    if value in _RUSSIAN_COLOURS:
        return _RUSSIAN_COLOURS[value]
    if re.fullmatch(r"[0-9a-f]{6}", value):  # "00ff00" without its hash
        value = "#" + value
    rgb = colour_rgb(value)
    if rgb is None:
        return None
    colour = "#{:02x}{:02x}{:02x}".format(*rgb)
    return WHITE if colour == "#ffffff" else colour


# ------------------------------------------------------------------- result buttons' callback data
RESULT_PREFIX = "r:"
KEY_PATTERN = r"[0-9a-f]{8}"
# r:<cache key>:<verb><background><crop>; verbs: l(ook), m(odel), p(alette), s(ticker). At most 19 bytes.
_RESULT_DATA = re.compile(rf"r:({KEY_PATTERN}):([lmps])(t|w|b|[0-9a-f]{{6}})([01])")
_BACKGROUND_CODES = {TRANSPARENT: "t", WHITE: "w", BLUR: "b"}
_CODE_BACKGROUNDS = {code: background for background, code in _BACKGROUND_CODES.items()}

LOOK = "l"
OTHER_MODEL = "m"
PALETTE_MENU = "p"
STICKER = "s"


@dataclass(frozen=True)
class ResultAction:
    """A validated press on a result button: which cached photo, what to do, and in which look."""

    key: str
    verb: str
    look: Look


def result_data(key: str, verb: str, look: Look) -> str:
    """The callback data of a result button."""
    code = _BACKGROUND_CODES.get(look.background) or look.background.removeprefix("#")
    return f"{RESULT_PREFIX}{key}:{verb}{code}{int(look.crop)}"


def parse_result_data(data: str | None) -> ResultAction | None:
    """The action behind a result button's data; None for anything this version did not make (forged, garbled)."""
    match = _RESULT_DATA.fullmatch(data or "")
    if match is None:
        return None
    key, verb, code, crop = match.groups()
    background = _CODE_BACKGROUNDS.get(code) or "#" + code
    return ResultAction(key, verb, Look(background, crop == "1"))


# ------------------------------------------------------------------- /bg buttons
BG_PREFIX = "bg:"


def background_data(background: str) -> str:
    """The callback data of a /bg button."""
    return BG_PREFIX + (_BACKGROUND_CODES.get(background) or background.removeprefix("#"))


def parse_background_data(data: str | None) -> str | None:
    """The background behind a /bg button, or None."""
    match = re.fullmatch(r"bg:(t|w|b|[0-9a-f]{6})", data or "")
    if match is None:
        return None
    code = match.group(1)
    return _CODE_BACKGROUNDS.get(code) or "#" + code
