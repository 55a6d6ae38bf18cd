# The epoll echo server as an image, as in the original study:
#   docker build -t c10k-epoll .
#   docker run -d -p 8000:7000 --name c10k-epoll c10k-epoll -p 7000
# Arguments after the image name go to `c10k serve epoll` (-p, --workers, ...).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system c10k
USER c10k
EXPOSE 7000
# 0.0.0.0: reachable through the published port. SIGTERM from `docker stop`
# ends it gracefully (exit 0 within --shutdown-timeout).
ENTRYPOINT ["c10k", "serve", "epoll", "--host", "0.0.0.0"]
CMD ["-p", "7000"]
