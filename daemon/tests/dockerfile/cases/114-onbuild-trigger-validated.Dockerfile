FROM alpine
ONBUILD COPY onlyone
