# One image for the Python side of the pipeline. docker-compose.yml runs the `runtime`
# stage three ways:
#   trainer  streaming-ml train (one-shot, writes the model to the BentoML home volume)
#   service  bentoml serve service:PricePredictor (port 3000)
#   bridge   streaming-ml bridge (metrics on 9400)
# and docker-compose-dev.yml runs the `dev` stage (JupyterLab, the package editable).
# Nothing is trained at build time: the model lives in a volume, not in the image.

FROM python:3.11.14-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/app/bentoml \
    BENTOML_DO_NOT_TRACK=true

# The dev compose passes the host user's uid so that files written into the mounted
# repository (notebook outputs, egg-info) stay owned by that user.
ARG APP_UID=1000
RUN groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --shell /bin/bash app \
    && python -m venv "${VIRTUAL_ENV}" \
    && mkdir -p "${BENTOML_HOME}" /app /home/app/work \
    && chown -R app:app "${VIRTUAL_ENV}" /home/app /app

USER app
WORKDIR /app

# Dependencies first, exactly as `make setup` installs them (requirements.lock, every
# file checked against its hash), so that editing the code does not re-download xgboost
# and friends. The lock holds the dev tools too: one list, the one the tests ran with.
COPY --chown=app:app pyproject.toml requirements.lock ./
RUN pip install --require-hashes -r requirements.lock


FROM base AS dev

RUN pip install jupyterlab==4.6.6 "setuptools>=77" wheel
# setuptools is here so the editable install at start needs no network (--no-build-isolation);
# 77 is the first release that reads pyproject's SPDX `license` string.

# docker-compose-dev.yml mounts the repository here and installs it editable at start.
WORKDIR /home/app/work
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]


# Last stage, so a plain `docker build .` produces the runtime image.
FROM base AS runtime

# README.md* : pyproject.toml names the readme; the glob keeps the build working in a
# checkout where it does not exist yet.
COPY --chown=app:app README.md* ./
COPY --chown=app:app src ./src
# Editable, so that streaming_ml.config.REPO_ROOT is /app and the code finds what it
# finds in a checkout: service.py (bentoml serve imports it from the working directory)
# and the connector configs in debezium/ (the bridge registers them).
RUN pip install --no-deps -e .
COPY --chown=app:app service.py bentofile.yaml ./
COPY --chown=app:app debezium ./debezium

EXPOSE 3000 9400
# Inside the container a server has to listen on the container's own interfaces;
# docker-compose.yml publishes each port on the host's 127.0.0.1 only.
CMD ["bentoml", "serve", "service:PricePredictor", "--host", "0.0.0.0", "--port", "3000"]
