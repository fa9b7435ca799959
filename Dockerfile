# MedAug Studio: the Streamlit app on the built-in phantom dataset.
#   docker build -t medaug . && docker run -p 8501:8501 -v medaug-ws:/app/workspace medaug
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDAUG_HOME=/app/workspace

# curl for the health check; libgomp for torch's CPU kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 medaug
WORKDIR /app

# Same file as `make run` installs; copied first so code edits keep the layer cached.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=medaug:medaug . .
RUN mkdir -p /app/workspace && chown medaug:medaug /app/workspace
USER medaug

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl --fail http://localhost:8501/_stcore/health || exit 1

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
