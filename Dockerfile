# polytomic-bot: Slack chatops bot for Polytomic bulk syncs.
#   docker build -t polytomic-bot .
#   docker run --env-file .env -p 3000:3000 -v polytomic-bot-data:/data polytomic-bot
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_COMPILE=1

RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --no-create-home --home-dir /data --shell /usr/sbin/nologin bot \
    && mkdir /data \
    && chown bot:bot /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir . \
    && rm -rf /src

# The default BOT_DATABASE_URL (sqlite:///polytomic-bot.db) is relative: it lands in /data.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BOT_PORT', '3000'), timeout=4)"]

ENTRYPOINT ["polytomic-bot"]
CMD ["serve"]
