# The sidecar as a container beside Atlantis: it takes port 4141, Atlantis listens on 4142.
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /home/sidecar --uid 10001 sidecar \
    && mkdir -p /var/lib/atlantis-sidecar \
    && chown sidecar:sidecar /var/lib/atlantis-sidecar

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY plugins ./plugins
RUN pip install --no-cache-dir . && rm -rf /app

USER sidecar
ENV ATLANTIS_ENHANCED_LOCKING_DATA_DIR=/var/lib/atlantis-sidecar
VOLUME ["/var/lib/atlantis-sidecar"]
EXPOSE 4141
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["atlantis-sidecar", "health", "--url", "http://127.0.0.1:4141"]
ENTRYPOINT ["atlantis-sidecar"]
CMD ["serve"]
