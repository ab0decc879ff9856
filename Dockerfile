# The job image: the pinned stack (container/requirements.lock), the project, and the `train` and
# `evaluate` programs SageMaker starts. Needs BuildKit (cache, bind and secret mounts). See README,
# "Container image", for the build arguments.
#
#   docker build -t flan-t5-detox .                               # CPU torch, trl from git
#   docker build --build-arg TORCH_VARIANT=pypi --build-arg TRL_SPEC=trl==0.4.2 \
#       --secret id=ca_bundle,src=/path/to/corporate-ca.pem -t flan-t5-detox .

# Any Debian-family image with python3 and the venv module (Debian's python3-venv).
ARG BASE_IMAGE=python:3.10-slim

# Small side stages build what the job image needs without leaving their tools in it.
FROM ${BASE_IMAGE} AS tools
# trl at the commit the lab used; a package spec (e.g. trl==0.4.2) where GitHub is unreachable.
ARG TRL_SPEC=git+https://github.com/lvwerra/trl.git@25fa1bd
ARG PIP_INDEX_URL
# Big wheels through slow proxies: pip's default 15 s read timeout is too short.
ARG PIP_DEFAULT_TIMEOUT=120
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# An optional extra CA bundle (TLS-intercepting proxies) arrives as the build secret `ca_bundle`;
# `with-ca` appends it to pip's own roots for one command. It is never stored in a layer.
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ -s /run/secrets/ca_bundle ]; then' \
        '  cat "$(python3 -c "import pip._vendor.certifi as c; print(c.where())")" /run/secrets/ca_bundle >/tmp/ca.pem' \
        '  export PIP_CERT=/tmp/ca.pem GIT_SSL_CAINFO=/tmp/ca.pem' \
        'fi' \
        'exec "$@"' >/usr/local/bin/with-ca \
    && chmod +x /usr/local/bin/with-ca
# tini (its static build is copied into the job image) and git, only for a git+ trl spec.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends tini $(case "$TRL_SPEC" in git+*) echo git ;; esac) \
    >/dev/null
RUN --mount=type=secret,id=ca_bundle \
    python3 -m venv /tmp/venv \
    && . /tmp/venv/bin/activate \
    && with-ca pip wheel -q --no-deps --use-pep517 -w /wheels/trl "$TRL_SPEC"

# The project as a wheel: a code change rebuilds this and one small layer of the job image.
FROM tools AS project
COPY . /src
RUN --mount=type=secret,id=ca_bundle \
    . /tmp/venv/bin/activate && with-ca pip wheel -q --no-deps -w /wheels/project /src

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
# cpu:  torch 1.13.1+cpu from the PyTorch CPU index (ml.m5 has no GPU; a far smaller image).
# pypi: torch 1.13.1 as PyPI serves it, the CUDA 11.7 build with its nvidia-* wheels (runs on CPU).
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TRL_SPEC=git+https://github.com/lvwerra/trl.git@25fa1bd
ARG PIP_INDEX_URL
ARG PIP_DEFAULT_TIMEOUT=120
COPY --from=tools /usr/bin/tini-static /usr/local/bin/tini
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1

# The lock, straight into the job image's layer (no multi-GB copy between stages). Wheels are kept
# in a cache mount (a wheelhouse) and reused when the lock changes: pip's HTTP cache does not help
# behind proxies that strip caching headers. With TORCH_VARIANT=cpu only torch comes from the
# PyTorch index, so no other package can be taken from there.
COPY container/requirements.lock /tmp/requirements.lock
RUN --mount=type=cache,id=detox-wheelhouse,target=/wheelhouse --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=tools,source=/usr/local/bin/with-ca,target=/usr/local/bin/with-ca \
    set -eu; \
    case "$TORCH_VARIANT" in \
        cpu) \
            torch="torch==$(sed -n 's/^torch==//p' /tmp/requirements.lock)+cpu"; \
            with-ca pip wheel -q --no-deps --find-links /wheelhouse --wheel-dir /wheelhouse \
                --index-url "$TORCH_CPU_INDEX_URL" "$torch"; \
            { echo "$torch"; grep -v -E '^(torch|nvidia-[a-z0-9-]+)==' /tmp/requirements.lock; } >/tmp/req.txt ;; \
        pypi) cp /tmp/requirements.lock /tmp/req.txt ;; \
        *) echo "TORCH_VARIANT must be cpu or pypi, got $TORCH_VARIANT" >&2; exit 2 ;; \
    esac; \
    with-ca pip wheel -q --use-pep517 --find-links /wheelhouse --wheel-dir /wheelhouse -r /tmp/req.txt; \
    pip install -q --no-cache-dir --no-index --find-links /wheelhouse -r /tmp/req.txt; \
    rm -rf /tmp/req.txt /tmp/requirements.lock /tmp/ca.pem /root/.cache

RUN --mount=type=bind,from=tools,source=/wheels/trl,target=/wheels \
    pip install -q --no-cache-dir --no-deps --no-index --find-links /wheels trl && pip check
RUN --mount=type=bind,from=project,source=/wheels/project,target=/wheels \
    pip install -q --no-cache-dir --no-deps --no-index --find-links /wheels flan-t5-detox
COPY container/train container/evaluate container/start-job /usr/local/bin/
# The jobs' environment has one owner, container/job.env; start-job applies it to each job
# process (no ENV here: ENV cannot be read from a file, and a second copy would drift).
COPY container/job.env /etc/flan-t5-detox/job.env
# The pins that matter (a test checks them against container/requirements.lock).
LABEL org.opencontainers.image.title="flan-t5-detox" \
      org.opencontainers.image.description="PPO detoxification of FLAN-T5 dialogue summaries: train and evaluate jobs" \
      org.opencontainers.image.version="0.1.0" \
      com.flan-t5-detox.base-image="${BASE_IMAGE}" \
      com.flan-t5-detox.torch="1.13.1" \
      com.flan-t5-detox.torch-variant="${TORCH_VARIANT}" \
      com.flan-t5-detox.transformers="4.27.2" \
      com.flan-t5-detox.peft="0.3.0" \
      com.flan-t5-detox.trl="${TRL_SPEC}" \
      com.flan-t5-detox.datasets="2.11.0" \
      com.flan-t5-detox.evaluate="0.4.0" \
      com.flan-t5-detox.accelerate="0.18.0"
WORKDIR /opt/ml
# tini as PID 1 forwards SIGTERM (docker stop, SageMaker StopTrainingJob) to the job and reaps
# children; `docker run IMAGE train` then runs /usr/local/bin/train, which execs the job through
# start-job: no process stays between tini and the job.
ENTRYPOINT ["/usr/local/bin/tini", "--"]
CMD ["train", "--help"]
