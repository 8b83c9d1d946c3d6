"""BackgroundRemover's Telegram bot: settings, the Application and its handlers, and the SQLite store."""
