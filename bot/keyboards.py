"""The inline keyboards: models, languages, backgrounds, the buttons under a result and its colour palette."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot import looks
from bot.texts import LANGUAGE_NAMES, LANGUAGES, Texts
from segmentation.effects import BLUR, TRANSPARENT, WHITE, Look

MODEL_PREFIX = "model:"
LANG_PREFIX = "lang:"


def model_keyboard(current: str, models: tuple[str, ...]) -> InlineKeyboardMarkup:
    """One button per model; the current one is ticked."""
    buttons = [
        InlineKeyboardButton(("✓ " if name == current else "") + name, callback_data=MODEL_PREFIX + name)
        for name in models
    ]
    return InlineKeyboardMarkup([buttons])


def language_keyboard(current: str) -> InlineKeyboardMarkup:
    """One button per language, each named in itself; the current one is ticked."""
    buttons = [
        InlineKeyboardButton(("✓ " if code == current else "") + LANGUAGE_NAMES[code], callback_data=LANG_PREFIX + code)
        for code in LANGUAGES
    ]
    return InlineKeyboardMarkup([buttons])


def background_keyboard(current: str, t: Texts) -> InlineKeyboardMarkup:
    """/bg's buttons: transparent, white, blur, then the palette; the current one is ticked."""

    def button(label: str, background: str) -> InlineKeyboardButton:
        mark = "✓ " if background == current else ""
        return InlineKeyboardButton(mark + label, callback_data=looks.background_data(background))

    named = [button(t.BTN_TRANSPARENT, TRANSPARENT), button(t.BTN_WHITE, WHITE), button(t.BTN_BLUR, BLUR)]
    palette = [button(label, colour) for label, colour in looks.PALETTE]
    return InlineKeyboardMarkup([named, palette[:4], palette[4:]])


def result_keyboard(key: str, look: Look, t: Texts) -> InlineKeyboardMarkup:
    """The buttons under a result; each carries the result's look, so a tap changes one thing at a time."""

    def button(label: str, verb: str, target: Look) -> InlineKeyboardButton:
        return InlineKeyboardButton(label, callback_data=looks.result_data(key, verb, target))

    crop_label = t.BTN_UNCROP if look.crop else t.BTN_CROP
    return InlineKeyboardMarkup(
        [
            [button(t.BTN_OTHER_MODEL, looks.OTHER_MODEL, look), button(t.BTN_STICKER, looks.STICKER, look)],
            [
                button(t.BTN_WHITE, looks.LOOK, Look(WHITE, look.crop)),
                button(t.BTN_BLUR, looks.LOOK, Look(BLUR, look.crop)),
                button(t.BTN_COLOUR, looks.PALETTE_MENU, look),
            ],
            [
                button(t.BTN_TRANSPARENT, looks.LOOK, Look(TRANSPARENT, look.crop)),
                button(crop_label, looks.LOOK, Look(look.background, not look.crop)),
            ],
        ]
    )


def palette_keyboard(key: str, look: Look) -> InlineKeyboardMarkup:
    """The Colour… palette for one cached photo (keeps the result's crop)."""
    buttons = [
        InlineKeyboardButton(label, callback_data=looks.result_data(key, looks.LOOK, Look(colour, look.crop)))
        for label, colour in looks.PALETTE
    ]
    return InlineKeyboardMarkup([buttons[:4], buttons[4:]])
