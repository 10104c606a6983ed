# The one linewatch application image: every service (ingest, detector, writer, dashboard,
# retraining) runs from it with a different command.  Used by deploy/compose and deploy/k8s.
#
#   docker build -t linewatch:0.1.0 .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t linewatch:0.1.0-cpu .
#
# By default torch comes from PyPI, whose Linux wheels carry the CUDA runtime: the same image
# runs on CPU and, given a GPU (Compose device reservation, Kubernetes nvidia.com/gpu), on CUDA.
# TORCH_INDEX_URL points pip at another index first for torch/torchvision, e.g. the CPU-only
# wheels for a much smaller image on machines without a GPU.
#
# ONNX Runtime and OpenVINO are installed (extras onnx, openvino), so `serve --backend auto` can pick
# the fastest runtime on the host; a checkpoint is exported once into LINEWATCH_EXPORT_CACHE, on
# the /data volume, and reused after restarts.
#
# Nothing is downloaded at run time: the masker's ImageNet weights
# (tf_efficientnet_lite0_in1k.safetensors) are mounted at /shared/models (LINEWATCH_SHARED_DIR),
# and the state (SQLite or PostgreSQL, blobs, models) lives under /data (LINEWATCH_DATA_DIR).
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LINEWATCH_DATA_DIR=/data \
    LINEWATCH_SHARED_DIR=/shared \
    LINEWATCH_EXPORT_CACHE=/data/export-cache

# libglib2.0-0: OpenCV's runtime; curl: container health checks
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# dependencies first, in their own layer: source edits do not reinstall torch
COPY pyproject.toml README.md ./
RUN mkdir -p ingest detector storage dashboard \
 && touch ingest/__init__.py detector/__init__.py storage/__init__.py dashboard/__init__.py \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch torchvision; fi \
 && pip install ".[postgres,bridges,onnx,openvino]" \
 && pip uninstall -y linewatch

COPY ingest ingest
COPY detector detector
COPY storage storage
COPY dashboard dashboard
COPY deploy/first-model.sh deploy/nightly.sh deploy/
RUN pip install --no-deps . \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin linewatch \
 && mkdir -p /data /shared \
 && chown linewatch: /data

USER linewatch
VOLUME ["/data"]
# detector 9102, writer 9103 (/healthz, /metrics); dashboard 8501
EXPOSE 8501 9102 9103
CMD ["linewatch-detector", "--help"]
