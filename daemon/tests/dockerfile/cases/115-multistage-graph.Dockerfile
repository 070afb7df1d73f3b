FROM alpine AS base
RUN apk add tools

FROM base AS build-a
RUN make a

FROM base AS build-b
RUN make b

FROM alpine AS unused
RUN sleep 100

FROM scratch
COPY --from=build-a /a /a
COPY --from=build-b /b /b
