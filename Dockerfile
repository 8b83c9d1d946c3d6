# BackgroundRemover bot: CPU-only image with the shipped weights inside.
#   docker build -t bgremover .
#   docker run -d --name bgremover -e BOT_TOKEN=... -e BOT_ADMIN_IDS=1001 -v bgremover-data:/data bgremover
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
RUN pip install . && python -c "from segmentation.weights_io import read_card; read_card('deeplab'); read_card('unet')"

RUN useradd --create-home --uid 10001 bot && mkdir -p /data && chown bot:bot /data
USER bot
VOLUME ["/data"]

CMD ["python", "-m", "bot"]
