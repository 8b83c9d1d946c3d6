"""`python -m bot` / `bgremover-bot`: load the settings, build the Application and long-poll until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import ValidationError

from bot.config import Settings, describe_settings_error

EXIT_CONFIG_ERROR = 2


def configure_logging(level: str) -> None:
    """Plain timestamped lines on stderr."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> int:
    """Run the bot; returns the process exit code (2 for a configuration error)."""
    try:
        settings = Settings()
    except ValidationError as error:
        # One clear line, no traceback: this is the most common first-run mistake.
        print(
            f"bgremover-bot: cannot start: {describe_settings_error(error)} (set it in the environment or in .env)",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    configure_logging(settings.log_level)

    # Imported after the settings check: the engine pulls in torch, which takes seconds to load.
    from telegram.error import InvalidToken, NetworkError

    from bot.app import ALLOWED_UPDATES, build_application

    application = build_application(settings)
    try:
        application.run_polling(stop_signals=(signal.SIGINT, signal.SIGTERM), allowed_updates=ALLOWED_UPDATES)
    except InvalidToken:
        print("bgremover-bot: cannot start: Telegram rejected BOT_TOKEN (check it with @BotFather)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except NetworkError as error:
        print(f"bgremover-bot: cannot reach the Bot API: {error.message}", file=sys.stderr)
        return 1
    except Exception as error:  # e.g. an unwritable BOT_DATA_DIR: one line, and the details in the redacted log
        logging.getLogger("bot").exception("the bot stopped on an unexpected error")
        print(f"bgremover-bot: stopped: {type(error).__name__} (details in the log above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
