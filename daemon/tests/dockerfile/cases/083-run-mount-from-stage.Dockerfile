FROM alpine AS config
RUN echo hi > /conf

FROM alpine
ARG DIR=/opt/conf
RUN --mount=from=config,target=$DIR cat /opt/conf/conf
