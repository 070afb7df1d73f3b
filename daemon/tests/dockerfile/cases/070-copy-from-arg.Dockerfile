ARG SRC=build
FROM alpine AS build
FROM alpine AS other
FROM scratch
ARG SRC
COPY --from=$SRC /a /a
