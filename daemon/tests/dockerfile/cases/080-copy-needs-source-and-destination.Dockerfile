FROM alpine
COPY --chown=1:1 onlyone
