FROM alpine
RUN --mount=type=cache true
