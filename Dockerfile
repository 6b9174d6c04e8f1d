# pda-repro images. Not built on our machines (no Docker engine there): linted with hadolint in the tests.
#   CPU:  docker build -t pda-repro .
#   GPU:  docker build --build-arg BASE=nvidia/cuda:13.0.0-devel-ubuntu24.04 --build-arg CAFFE_GPU=1 -t pda-repro:gpu .
#         (Caffe is then built with CPU_ONLY=OFF, -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_STANDARD=17;
#          see scripts/build_caffe.sh. cuBLAS/cuRAND come from the PyPI wheels nvidia-cublas/nvidia-curand
#          when the base image lacks them.)
ARG BASE=debian:bookworm
FROM ${BASE}

ARG CAFFE_GPU=0
ENV DEBIAN_FRONTEND=noninteractive \
    PDA_REPRO_CAFFE_GPU=${CAFFE_GPU}


SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (Debian 12 ships it as python3.11) plus what `make setup` installs itself.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ca-certificates=* git=* make=* python3.11=* python3.11-venv=* python3.11-dev=* sudo=* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pda-repro
COPY . /opt/pda-repro

# The same idempotent set-up as on a developer machine: apt build deps, .venv, pycaffe from the
# brocolli-caffe sdist, caffe_pb2, converted models.
RUN make setup && rm -rf /var/lib/apt/lists/*

ENTRYPOINT ["/opt/pda-repro/.venv/bin/pda-repro"]
CMD ["--help"]
