# The gateway as a container image: `docker compose up` builds it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/dicomweb-gateway
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

USER gateway
# 8080: DICOMweb over HTTP; 11113: the Storage SCP for C-MOVE (when enabled).
EXPOSE 8080 11113
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

CMD ["dicomweb-gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
