"""Everything the bot says, in English and Russian: one catalogue of templates, one `Texts` per language.

Handlers never hold a sentence: they ask `texts.for_language(code)` for a `Texts` and call it. Module-level
names (`texts.BUSY`, `texts.queued(1)`) are the English texts, for logs, tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

from bot.outcomes import parse_outcome
from bot.store import StoreStats

LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "ru": "Русский"}
MAX_ECHOED_NAME = 20  # characters of an unknown model name we repeat back

# The templates: constants are used as they are, the others through Texts' methods (str.format fields).
CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "TEXT_HINT": "Send me a photo of a person and I'll send it back with the background removed. "
        "See /help for how it works.",
        "UNKNOWN_COMMAND": "I don't know that command. /help lists what I can do.",
        "OTHER_MEDIA": "I can only work with still images. Send a photo, or a JPEG, PNG or WEBP file.",
        "BUSY": "I'm very busy right now and my queue is full. Please try again in a minute.",
        "RESTARTING": "Sorry, the bot is restarting and your photo was not finished. Please send it again in a moment.",
        "TIMEOUT": "Sorry, that photo took too long to process. Please try again, perhaps with a smaller image.",
        "DOWNLOAD_FAILED": "I couldn't download that file from Telegram. Please send it again.",
        "GENERIC_ERROR": "Sorry, something went wrong on my side. Please try again later.",
        "NO_PERSON_NOTE": "I couldn't find a person in this photo, so the result may be mostly transparent.",
        "STATS_REFUSED": "Sorry, that command isn't available to you.",
        "STATS_PRIVATE_ONLY": "/stats works in a private chat with me only. Send it to me there.",
        "SEND_AGAIN": "I no longer have that photo. Please send it again.",
        "BUTTON_INVALID": "That button doesn't work any more.",
        "TAP_ACK": "One moment…",
        "PHOTO_BUSY": "Still working on this photo, one moment…",
        "NO_PERSON_STICKER": "I couldn't find a person in this photo, so there is nothing to make a sticker of.",
        "PALETTE_PROMPT": "Pick a background colour:",
        "LANG_CHOOSE": "Choose the language I speak to you in:",
        "LANG_SET": "I'll speak English with you from now on.",
        "LANG_UNKNOWN": "I speak English (/lang en) and Russian (/lang ru).",
        "CROP_ON": "Results in this chat are now cropped to the people, with a small margin.",
        "CROP_OFF": "Results in this chat now keep the whole frame.",
        "CROP_USAGE": "Use /crop on or /crop off. Cropping is {state} in this chat.",
        "STATE_ON": "on",
        "STATE_OFF": "off",
        "BTN_OTHER_MODEL": "🔁 Other model",
        "BTN_WHITE": "⬜ White",
        "BTN_BLUR": "🌫 Blur",
        "BTN_COLOUR": "🎨 Colour…",
        "BTN_STICKER": "🏷 Sticker",
        "BTN_TRANSPARENT": "🔲 Transparent",
        "BTN_CROP": "✂️ Crop",
        "BTN_UNCROP": "🖼 Whole frame",
        "BG_transparent": "a transparent background",
        "BG_white": "a white background",
        "BG_blur": "the original background, blurred",
        "BG_colour": "a {hex} background",
        "BG_CURRENT": "Results in this chat get {background}. Tap a button, or send /bg #RRGGBB or a colour name.",
        "BG_SET": "Done: results in this chat now get {background}.",
        "BG_INVALID": "“{value}” is not a colour I know. Try white, blur, transparent, a name like navy, or #RRGGBB.",
        "MB": "{value} MB",
        "KB": "{value} KB",
        "WELCOME": "Hi! I remove the background from photos of people.\n\n"
        "Send me a photo (or up to 10 at once) and I'll send it back as a PNG file with a transparent "
        "background. For full quality, send it as a file (📎 → File): Telegram compresses photos, but not files. "
        "JPEG, PNG and WEBP files up to {limit} work.\n\n"
        "Under each result, buttons redo it at once: another model, a white, blurred or coloured background, "
        "a sticker, a crop to the people.\n\n"
        "Commands:\n"
        "/bg — this chat's background: /bg white, /bg blur, /bg transparent, /bg #00ff00 or a colour name\n"
        "/crop on|off — crop results to the people\n"
        "/model — switch the model\n"
        "/lang — English or Russian\n"
        "A caption on a photo (white, blur, #00ff00) sets the background for that photo only.\n\n"
        "Models:",
        "WELCOME_MODEL": "• {name}{mark} — {description}",
        "WELCOME_CURRENT": " (current)",
        "WELCOME_SWITCH": "Switch with /model, for example /model {other}.",
        "MODEL_deeplab": "DeepLabV3 on ResNet18, the recommended one",
        "MODEL_unet": "the classic UNet encoder-decoder",
        "MODEL_CURRENT": "The current model is {name}. Tap a button to switch.",
        "MODEL_SWITCHED": "Switched to {name}. Your next photos will use it.",
        "MODEL_UNKNOWN": "I don't know a model called “{name}”. Available models: {models}.",
        "MODEL_UNAVAILABLE": "Sorry, the {name} model is not available right now.{suggestion}",
        "MODEL_TRY": " Try {others}.",
        "OR": " or ",
        "NOT_AN_IMAGE": "That looks like {kind}, not an image. Send me a photo, or a JPEG, PNG or WEBP file.",
        "UNREADABLE": "I couldn't read that image: {reason}. Please send a different photo.",
        "TOO_MANY_PIXELS": "That image is too large ({size}); I can handle up to {limit:g} megapixels. "
        "Please send a smaller one.",
        "MEGAPIXELS": "{value:.1f} megapixels",
        "PIXELS_UNKNOWN": "too many pixels",
        "FILE_TOO_BIG": "That file is too big{shown}: bots can only download files up to {limit}. "
        "Please send a smaller file, or send it as a photo.",
        "USER_LIMIT_ONE": "You already have 1 photo in progress. Please wait for it to finish, then send more.",
        "USER_LIMIT": "You already have {pending} photos in progress. Please wait for them to finish, then send more.",
        "QUEUED_ONE": "You're number 2 in line: 1 photo is ahead of yours. I'll send the result when it's ready.",
        "QUEUED": "You're number {place} in line: {ahead} photos are ahead of yours. "
        "I'll send the result when it's ready.",
        "RESULT_TOO_BIG": "The result is {size}, more than the {limit} Telegram lets me send. "
        "Please send a smaller photo.",
        "CAPTION": "Background removed with {model} in {seconds:.1f} s.",
        "ALBUM_CAPTION": "{index} of {total}",
        "ALBUM_FAILURE": "Photo {index} of {total}: {reason}",
        "ALBUM_OVER_LIMIT": "not processed: you may have {limit} photos in progress at once. Send it again later.",
        "STATS_TITLE": "Bot statistics",
        "STATS_UPTIME": "Uptime: {value}",
        "STATS_REQUESTS": "Requests: {total} total, {day} in the last 24 hours",
        "STATS_SUCCEEDED": "Succeeded: {count}{kinds}",
        "STATS_FAILED": "Failed: {count}{kinds}",
        "STATS_MODELS": "Models:",
        "STATS_MODEL": "• {name}: {count} done, p50 {p50}, p95 {p95}",
        "STATS_NO_RESULTS": "• no results yet",
        "STATS_NOW": "Now: {waiting} waiting, {running} in progress",
        "STATS_CHATS": "Distinct chats: {count}",
        "CMD_start": "What this bot does",
        "CMD_help": "How to use it, all commands",
        "CMD_bg": "Background: white, blur, transparent or a colour",
        "CMD_crop": "Crop results to the people (on/off)",
        "CMD_model": "Show or switch the segmentation model",
        "CMD_lang": "Language: English or Russian",
    },
    "ru": {
        "TEXT_HINT": "Пришлите фото человека, и я верну его без фона. Как это работает — в /help.",
        "UNKNOWN_COMMAND": "Я не знаю такой команды. Список команд — в /help.",
        "OTHER_MEDIA": "Я работаю только с картинками. Пришлите фото или файл JPEG, PNG или WEBP.",
        "BUSY": "Сейчас я очень занят, очередь заполнена. Попробуйте через минуту.",
        "RESTARTING": "Извините, бот перезапускается, и ваше фото не успело обработаться. "
        "Пришлите его ещё раз чуть позже.",
        "TIMEOUT": "Извините, фото обрабатывалось слишком долго. Попробуйте ещё раз, например с фото поменьше.",
        "DOWNLOAD_FAILED": "Не получилось скачать файл из Telegram. Пришлите его ещё раз.",
        "GENERIC_ERROR": "Извините, у меня что-то пошло не так. Попробуйте позже.",
        "NO_PERSON_NOTE": "Я не нашёл на фото человека, поэтому результат может оказаться почти прозрачным.",
        "STATS_REFUSED": "Извините, эта команда вам недоступна.",
        "STATS_PRIVATE_ONLY": "/stats работает только в личном чате со мной. Отправьте её туда.",
        "SEND_AGAIN": "Этого фото у меня уже нет. Пришлите его ещё раз.",
        "BUTTON_INVALID": "Эта кнопка больше не работает.",
        "TAP_ACK": "Секунду…",
        "PHOTO_BUSY": "Ещё работаю над этим фото, секунду…",
        "NO_PERSON_STICKER": "Я не нашёл на фото человека, так что стикер сделать не из чего.",
        "PALETTE_PROMPT": "Выберите цвет фона:",
        "LANG_CHOOSE": "Выберите язык, на котором я буду с вами говорить:",
        "LANG_SET": "Теперь я говорю с вами по-русски.",
        "LANG_UNKNOWN": "Я говорю по-английски (/lang en) и по-русски (/lang ru).",
        "CROP_ON": "Теперь результаты в этом чате обрезаются по людям, с небольшим полем.",
        "CROP_OFF": "Теперь результаты в этом чате сохраняют весь кадр.",
        "CROP_USAGE": "Используйте /crop on или /crop off. Сейчас обрезка в этом чате {state}.",
        "STATE_ON": "включена",
        "STATE_OFF": "выключена",
        "BTN_OTHER_MODEL": "🔁 Другая модель",
        "BTN_WHITE": "⬜ Белый",
        "BTN_BLUR": "🌫 Размытие",
        "BTN_COLOUR": "🎨 Цвет…",
        "BTN_STICKER": "🏷 Стикер",
        "BTN_TRANSPARENT": "🔲 Прозрачный",
        "BTN_CROP": "✂️ Обрезать",
        "BTN_UNCROP": "🖼 Весь кадр",
        "BG_transparent": "прозрачный фон",
        "BG_white": "белый фон",
        "BG_blur": "размытый исходный фон",
        "BG_colour": "фон цвета {hex}",
        "BG_CURRENT": "Результаты в этом чате получают {background}. Нажмите кнопку или отправьте /bg #RRGGBB "
        "или название цвета.",
        "BG_SET": "Готово: теперь результаты в этом чате получают {background}.",
        "BG_INVALID": "«{value}» — не цвет, который я знаю. Попробуйте white, blur, transparent, название цвета "
        "(например, синий) или #RRGGBB.",
        "MB": "{value} МБ",
        "KB": "{value} КБ",
        "WELCOME": "Привет! Я убираю фон с фотографий людей.\n\n"
        "Пришлите фото (или до 10 сразу), и я верну его файлом PNG с прозрачным фоном. Для лучшего качества "
        "отправляйте фото файлом (📎 → Файл): Telegram сжимает фото, но не файлы. Подходят файлы JPEG, PNG и WEBP "
        "до {limit}.\n\n"
        "Кнопки под каждым результатом сразу переделывают его: другая модель, белый, размытый или цветной фон, "
        "стикер, обрезка по людям.\n\n"
        "Команды:\n"
        "/bg — фон в этом чате: /bg white, /bg blur, /bg transparent, /bg #00ff00 или название цвета\n"
        "/crop on|off — обрезать результаты по людям\n"
        "/model — сменить модель\n"
        "/lang — английский или русский\n"
        "Подпись к фото (white, blur, #00ff00) задаёт фон только для этого фото.\n\n"
        "Модели:",
        "WELCOME_MODEL": "• {name}{mark} — {description}",
        "WELCOME_CURRENT": " (выбрана)",
        "WELCOME_SWITCH": "Сменить: /model, например /model {other}.",
        "MODEL_deeplab": "DeepLabV3 на ResNet18, рекомендуемая",
        "MODEL_unet": "классический кодировщик-декодировщик UNet",
        "MODEL_CURRENT": "Сейчас выбрана модель {name}. Нажмите кнопку, чтобы сменить.",
        "MODEL_SWITCHED": "Переключился на {name}. Следующие фото пойдут через неё.",
        "MODEL_UNKNOWN": "Я не знаю модели «{name}». Есть такие: {models}.",
        "MODEL_UNAVAILABLE": "Извините, модель {name} сейчас недоступна.{suggestion}",
        "MODEL_TRY": " Попробуйте {others}.",
        "OR": " или ",
        "NOT_AN_IMAGE": "Похоже, это {kind}, а не картинка. Пришлите фото или файл JPEG, PNG или WEBP.",
        "UNREADABLE": "Не получилось прочитать картинку: {reason}. Пришлите другое фото.",
        "TOO_MANY_PIXELS": "Картинка слишком большая ({size}); я обрабатываю до {limit:g} мегапикселей. "
        "Пришлите поменьше.",
        "MEGAPIXELS": "{value:.1f} мегапикселя",
        "PIXELS_UNKNOWN": "слишком много пикселей",
        "FILE_TOO_BIG": "Файл слишком большой{shown}: боты могут скачивать файлы только до {limit}. "
        "Пришлите файл поменьше или отправьте его как фото.",
        "USER_LIMIT_ONE": "У вас уже обрабатывается 1 фото. Дождитесь результата, потом присылайте ещё.",
        "USER_LIMIT": "У вас уже обрабатывается {pending} фото. Дождитесь результатов, потом присылайте ещё.",
        "QUEUED_ONE": "Вы 2-й в очереди: перед вашим 1 фото. Пришлю результат, как только он будет готов.",
        "QUEUED": "Вы {place}-й в очереди: перед вашим {ahead} фото. Пришлю результат, как только он будет готов.",
        "RESULT_TOO_BIG": "Результат весит {size}, больше {limit}, которые Telegram разрешает мне отправить. "
        "Пришлите фото поменьше.",
        "CAPTION": "Фон убран моделью {model} за {seconds:.1f} с.",
        "ALBUM_CAPTION": "{index} из {total}",
        "ALBUM_FAILURE": "Фото {index} из {total}: {reason}",
        "ALBUM_OVER_LIMIT": "не обработано: одновременно можно обрабатывать {limit} фото. Пришлите его позже.",
        "STATS_TITLE": "Статистика бота",
        "STATS_UPTIME": "Работает: {value}",
        "STATS_REQUESTS": "Запросов: {total} всего, {day} за последние 24 часа",
        "STATS_SUCCEEDED": "Успешно: {count}{kinds}",
        "STATS_FAILED": "Неудачно: {count}{kinds}",
        "STATS_MODELS": "Модели:",
        "STATS_MODEL": "• {name}: готово {count}, p50 {p50}, p95 {p95}",
        "STATS_NO_RESULTS": "• результатов пока нет",
        "STATS_NOW": "Сейчас: {waiting} ждут, {running} в работе",
        "STATS_CHATS": "Разных чатов: {count}",
        "CMD_start": "Что умеет этот бот",
        "CMD_help": "Как пользоваться, все команды",
        "CMD_bg": "Фон: белый, размытый, прозрачный или цвет",
        "CMD_crop": "Обрезать результаты по людям (on/off)",
        "CMD_model": "Показать или сменить модель",
        "CMD_lang": "Язык: английский или русский",
    },
}

# What triage calls a file, in Russian (triage names it in English; these are its words).
_KINDS_RU = {
    "a vector drawing (SVG)": "векторный рисунок (SVG)",
    "a PDF document": "документ PDF",
    "a video": "видео",
    "an audio file": "аудиофайл",
    "an archive": "архив",
    "a text document": "текстовый документ",
}

# The decoder's reasons (segmentation.decoding, English) that a bot user can meet, in Russian.
_REASONS_RU = {
    "the file is empty": "файл пустой",
    "this file is not an image format I can read (JPEG, PNG, WEBP, ...)": (
        "это не тот формат картинок, который я умею читать (JPEG, PNG, WEBP, ...)"
    ),
    "the image is corrupt or truncated and cannot be decoded": "картинка повреждена или обрезана",
    "the image holds invalid values (NaN or infinity) and cannot be shown": (
        "в картинке недопустимые значения (NaN или бесконечность)"
    ),
}

COMMANDS = ("start", "help", "bg", "crop", "model", "lang")


def language_of(code: str | None) -> str:
    """The catalogue language for a Telegram language_code: Russian for ru*, English otherwise."""
    return "ru" if (code or "").lower().startswith("ru") else DEFAULT_LANGUAGE


class Texts:
    """The bot's sentences in one language; constants are attributes (`BUSY`), the rest are methods."""

    def __init__(self, language: str) -> None:
        self.language = language
        self._templates = CATALOGUE[language]
        for key, value in self._templates.items():
            if key.isupper() and "{" not in value:
                setattr(self, key, value)

    def _t(self, key: str, **fields: Any) -> str:
        return self._templates[key].format(**fields)

    def megabytes(self, size: int) -> str:
        """A byte count as "20 MB" (decimal megabytes, as Telegram states its limits)."""
        if size >= 1_000_000:
            return self._t("MB", value=f"{size / 1e6:.0f}")
        return self._t("KB", value=f"{size / 1000:.0f}")

    def command_description(self, command: str) -> str:
        """The command menu's line for one command."""
        return self._t(f"CMD_{command}")

    def welcome(self, current: str, models: tuple[str, ...], max_download: int) -> str:
        """The /start and /help text: what the bot does, the commands, the models and the current one."""
        lines = [self._t("WELCOME", limit=self.megabytes(max_download))]
        for name in models:
            mark = self._t("WELCOME_CURRENT") if name == current else ""
            description = self._templates.get(f"MODEL_{name}", name)
            lines.append(self._t("WELCOME_MODEL", name=name, mark=mark, description=description))
        other = next((m for m in models if m != current), current)
        lines.append(self._t("WELCOME_SWITCH", other=other))
        return "\n".join(lines)

    def model_current(self, current: str) -> str:
        """What /model alone says."""
        return self._t("MODEL_CURRENT", name=current)

    def model_switched(self, name: str) -> str:
        """The answer to a successful switch."""
        return self._t("MODEL_SWITCHED", name=name)

    def model_unknown(self, name: str, models: tuple[str, ...]) -> str:
        """The answer to /model with a name we don't have (a long name is cut: a reply holds 4,096 characters)."""
        shown = name if len(name) <= MAX_ECHOED_NAME else name[: MAX_ECHOED_NAME - 1] + "…"
        return self._t("MODEL_UNKNOWN", name=shown, models=", ".join(models))

    def model_unavailable(self, model: str, models: tuple[str, ...]) -> str:
        """The chosen model cannot be loaded on this server."""
        others = [f"/model {name}" for name in models if name != model]
        suggestion = self._t("MODEL_TRY", others=self._t("OR").join(others)) if others else ""
        return self._t("MODEL_UNAVAILABLE", name=model, suggestion=suggestion)

    def not_an_image(self, kind: str) -> str:
        """The answer to a document that is not an image, naming what it looks like."""
        if self.language == "ru":
            kind = _KINDS_RU.get(kind, kind.removeprefix("a ").replace(" file", "-файл"))
        return self._t("NOT_AN_IMAGE", kind=kind)

    def unreadable_image(self, reason: str) -> str:
        """The answer to a file the decoder refused; reason comes from the segmentation package and is user-safe."""
        if self.language == "ru":
            reason = _REASONS_RU.get(reason, reason)
        return self._t("UNREADABLE", reason=reason)

    def too_many_pixels(self, pixels: int | None, limit: int) -> str:
        """The answer to an image above the pixel limit."""
        size = self._t("MEGAPIXELS", value=pixels / 1e6) if pixels else self._t("PIXELS_UNKNOWN")
        return self._t("TOO_MANY_PIXELS", size=size, limit=limit / 1e6)

    def file_too_big(self, size: int | None, limit: int) -> str:
        """The answer to a file over the download limit."""
        shown = f" ({self.megabytes(size)})" if size else ""
        return self._t("FILE_TOO_BIG", shown=shown, limit=self.megabytes(limit))

    def user_limit(self, pending: int) -> str:
        """The answer when one user already has the maximum number of photos in progress."""
        return self._t("USER_LIMIT_ONE") if pending == 1 else self._t("USER_LIMIT", pending=pending)

    def queued(self, ahead: int) -> str:
        """The place-in-line message."""
        return self._t("QUEUED_ONE") if ahead == 1 else self._t("QUEUED", place=ahead + 1, ahead=ahead)

    def result_too_big(self, size: int, limit: int) -> str:
        """The finished result is larger than a bot may upload."""
        return self._t("RESULT_TOO_BIG", size=self.megabytes(size), limit=self.megabytes(limit))

    def result_caption(self, model: str, seconds: float, person_found: bool) -> str:
        """The caption of a result document."""
        caption = self._t("CAPTION", model=model, seconds=seconds)
        return caption if person_found else f"{caption}\n{self._t('NO_PERSON_NOTE')}"

    def album_caption(self, index: int, total: int) -> str:
        """The caption of one document of an album answer (1-based index)."""
        return self._t("ALBUM_CAPTION", index=index, total=total)

    def album_failure(self, index: int, total: int, reason: str) -> str:
        """One photo of an album that got no result, named by its place in the album."""
        return self._t("ALBUM_FAILURE", index=index, total=total, reason=reason)

    def album_over_limit(self, limit: int) -> str:
        """Why a photo of an album beyond the user's pending limit was not processed."""
        return self._t("ALBUM_OVER_LIMIT", limit=limit)

    def background_name(self, background: str) -> str:
        """A background setting in words: transparent, white, blurred, or the colour's hex."""
        if background.startswith("#"):
            return self._t("BG_colour", hex=background)
        return self._t(f"BG_{background}")

    def background_current(self, background: str) -> str:
        """What /bg alone says."""
        return self._t("BG_CURRENT", background=self.background_name(background))

    def background_set(self, background: str) -> str:
        """The answer to a new background setting."""
        return self._t("BG_SET", background=self.background_name(background))

    def background_invalid(self, value: str) -> str:
        """The answer to /bg with something that is not a colour."""
        return self._t("BG_INVALID", value=value[:40])

    def crop_usage(self, crop: bool) -> str:
        """What /crop without on/off says."""
        return self._t("CROP_USAGE", state=self._t("STATE_ON" if crop else "STATE_OFF"))

    def stats_report(self, stats: StoreStats, uptime_s: float, queue_depth: int, in_flight: int) -> str:
        """The /stats text for admins (outcome labels stay as /stats names them)."""

        def kinds(success: bool) -> str:
            parts = []
            for kind, count in stats.outcomes.items():
                outcome = parse_outcome(kind)  # None: an outcome a newer version stored, shown as stored
                if (outcome is not None and outcome.succeeded) == success:
                    parts.append(f"{outcome.label if outcome else kind} {count}")
            return f" ({', '.join(parts)})" if parts else ""

        lines = [
            self._t("STATS_TITLE"),
            self._t("STATS_UPTIME", value=_duration(uptime_s)),
            self._t("STATS_REQUESTS", total=stats.total, day=stats.last_24h),
            self._t("STATS_SUCCEEDED", count=stats.successes, kinds=kinds(True)),
            self._t("STATS_FAILED", count=stats.failures, kinds=kinds(False)),
            self._t("STATS_MODELS"),
        ]
        if stats.models:
            for name, model in stats.models.items():
                p50, p95 = _seconds(model.p50), _seconds(model.p95)
                lines.append(self._t("STATS_MODEL", name=name, count=model.count, p50=p50, p95=p95))
        else:
            lines.append(self._t("STATS_NO_RESULTS"))
        lines.append(self._t("STATS_NOW", waiting=queue_depth, running=in_flight))
        lines.append(self._t("STATS_CHATS", count=stats.distinct_chats))
        return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f} s"


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {int(seconds) % 60}s"


BY_LANGUAGE = {language: Texts(language) for language in LANGUAGES}
ENGLISH = BY_LANGUAGE["en"]
RUSSIAN = BY_LANGUAGE["ru"]


def for_language(language: str | None) -> Texts:
    """The Texts of a catalogue language (English for anything else)."""
    return BY_LANGUAGE.get(language or DEFAULT_LANGUAGE, ENGLISH)


def __getattr__(name: str) -> Any:
    """`texts.BUSY`, `texts.queued(...)`: the English catalogue, for logs, tests and benchmarks."""
    try:
        return getattr(ENGLISH, name)
    except AttributeError:
        raise AttributeError(f"module 'bot.texts' has no attribute {name!r}") from None
