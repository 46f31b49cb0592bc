# The flag server under gunicorn, on SQLite in /data by default.
# Several replicas: set FLAGSERVER_DATABASE_URL=redis://host:6379/0 and FLAGSERVER_SECRET_KEY.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FLAGSERVER_INSTANCE_PATH=/data

WORKDIR /app
COPY sdk/ sdk/
COPY setup.cfg pyproject.toml README.md ./
COPY flagserver/ flagserver/
RUN pip install --no-cache-dir ./sdk . \
 && useradd --system --uid 10001 --home-dir /data flagserver \
 && mkdir -p /data && chown flagserver /data

USER flagserver
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["flagserver", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
