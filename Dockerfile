# sam3d-bot: docker run -d --restart unless-stopped --env-file .env -v sam3d-data:/data \
#   -p 8080:8080 sam3d-bot            (or: docker compose up -d, with compose.yaml)

# The 3D viewer's JavaScript, from the npm registry at build time (served by the bot itself).
FROM node:20-bookworm-slim AS viewer
COPY scripts/fetch-viewer-js /src/scripts/fetch-viewer-js
RUN /src/scripts/fetch-viewer-js /vendor

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080

# Mesa through EGL: f3d draws previews on the CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin bot \
    && mkdir -p /data && chown bot:bot /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY --from=viewer /vendor ./bot/static/vendor
COPY adapters ./adapters
RUN pip install .

USER bot
# Build f3d's lighting cache (~5 s, ~50 MB) into the image, not on a user's first job.
RUN python -m bot.render.worker < /dev/null
# Commands run in the volume: `docker run ... sam3d-bot generate /data/photo.jpg` writes its
# ./out folder there, where the bot user may write and the host can read it.
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('HTTP_PORT', '8080'), timeout=4)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["sam3d-bot"]
CMD ["run"]
