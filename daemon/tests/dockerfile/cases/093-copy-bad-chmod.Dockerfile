FROM alpine
COPY --chmod=888 a /b
