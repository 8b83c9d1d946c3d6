# BackgroundRemover: one CPU-only image with the shipped weights inside, for every role.
#   docker build -t bgremover .
#   the bot alone:  docker run -d --name bgremover --stop-timeout 30 -e BOT_TOKEN=... -e BOT_ADMIN_IDS=1001 \
#                     -v bgremover-data:/data bgremover   (30 s: time for BOT_SHUTDOWN_TIMEOUT's drain)
#   with a cluster: deploy/compose.yaml runs this image as the Ray head, the Ray workers and the bot.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BOT_DATA_DIR=/data

WORKDIR /app

# CPU-only torch wheels: a fraction of the size of the default CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY segmentation ./segmentation
COPY bot ./bot
COPY training ./training
# ray: the Serve backend and the `ray` command (head and workers); webhook: the bot's webhook server.
# One image for all roles, so the bot, the head and the workers always run the same Ray and the same code.
RUN pip install ".[ray,webhook]" \
    && python -c "from segmentation.weights_io import read_card; read_card('deeplab'); read_card('unet')" \
    && python -c "import ray, ray.serve, tornado"

RUN useradd --create-home --uid 10001 bot && mkdir -p /data && chown bot:bot /data
USER bot
VOLUME ["/data"]
# The webhook port (BOT_WEBHOOK_PORT), used only in webhook mode.
EXPOSE 8443

CMD ["python", "-m", "bot"]
