# The epoll echo server as an image, built and run with the original study's commands:
#   docker build -t epoll_server_image .
#   docker run -d -p 8000:7000 --name epoll_server_container epoll_server_image -p 7000
# Arguments after the image name go to `c10k serve epoll` (-p, --workers, ...).
# With Podman instead of Docker, see container/README.md (build with --format docker
# to keep the HEALTHCHECK; OCI images have none).
FROM python:3.11-slim

# `c10k serve epoll` needs only the standard library: --no-deps keeps numpy,
# matplotlib, psutil, rich and uvloop (the study, the load client and the
# other servers use them) out of the image.
COPY pyproject.toml README.md /tmp/c10k/
COPY src /tmp/c10k/src
COPY container/healthcheck.py /usr/local/lib/c10k-healthcheck.py
RUN pip install --no-cache-dir --no-compile --no-deps /tmp/c10k \
    && rm -rf /tmp/c10k \
    && useradd --system --no-create-home c10k
USER c10k
EXPOSE 7000

# A real echo through the port the server listens on (found in /proc/net/tcp,
# since the port is whatever followed the image name).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/lib/c10k-healthcheck.py"]

# Exec form: the server is PID 1 and receives `docker stop`'s SIGTERM itself;
# it stops accepting, finishes the echoes in flight, closes every connection and
# exits 0 within --shutdown-timeout (5 s, under docker stop's 10 s).
# 0.0.0.0: reachable through the published port.
ENTRYPOINT ["c10k", "serve", "epoll", "--host", "0.0.0.0"]
CMD ["-p", "7000"]
