"""`python -m bot` / `bgremover-bot`: load the settings, build the Application, long-poll (or serve a webhook)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from pydantic import ValidationError

from bot.config import Settings, describe_settings_error

EXIT_CONFIG_ERROR = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("bgremover-bot")


def configure_logging(level: str) -> None:
    """Plain timestamped lines on stderr."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


def main() -> int:
    """Run the bot; returns the process exit code (2 for a configuration error)."""
    configure_logging("INFO")  # until the settings say otherwise: even a settings error is a log line
    try:
        settings = Settings()
    except ValidationError as error:
        # One clear line, no traceback: this is the most common first-run mistake.
        logger.error("cannot start: %s (set it in the environment or in .env)", describe_settings_error(error))
        return EXIT_CONFIG_ERROR
    configure_logging(settings.log_level)
    from segmentation.cpu import bf16_setting  # light: no torch

    try:
        bf16_setting()  # read once here so that a bad value stops the start, not every photo
    except ValueError as error:
        logger.error("cannot start: %s", error)
        return EXIT_CONFIG_ERROR

    # Imported after the settings check: the engine pulls in torch, which takes seconds to load.
    from telegram.error import InvalidToken, NetworkError

    from bot.app import ALLOWED_UPDATES, build_application, webhook_options
    from bot.services import SERVICES_KEY

    application = build_application(settings)  # installs the token redaction before anything can log it
    try:
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        webhook = webhook_options(settings)
        if webhook is None:
            application.run_polling(stop_signals=stop_signals, allowed_updates=ALLOWED_UPDATES)
        else:
            logger.info("serving the webhook on %s:%d", settings.webhook_listen, settings.webhook_port)
            application.run_webhook(stop_signals=stop_signals, **webhook)
        code = 0
    except InvalidToken:
        logger.error("cannot start: Telegram rejected BOT_TOKEN (check it with @BotFather)")
        return EXIT_CONFIG_ERROR
    except NetworkError as error:
        logger.error("cannot reach the Bot API: %s", error.message)
        return 1
    except Exception:  # e.g. an unwritable BOT_DATA_DIR: the details go to the (redacted) log
        logger.exception("the bot stopped on an unexpected error")
        return 1
    engine = application.bot_data[SERVICES_KEY].engine
    if engine.busy_threads:
        # A running inference cannot be interrupted and its caller has been answered: don't wait for it (nor risk
        # a daemon thread waking up in a finalising interpreter). Everything else is closed already.
        logger.warning("exiting while %d inference thread(s) are still busy", engine.busy_threads)
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
