FROM alpine
RUN --mount=type=tmpfs,target=/t,sharing=locked true
