ARG CODE_VERSION=latest
ARG PLAT=linux/amd64
FROM --platform=$PLAT base:${CODE_VERSION} AS app
CMD  /code/run-app

FROM extras:${CODE_VERSION}
CMD  /code/run-extras
