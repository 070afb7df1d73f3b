FROM alpine
COPY --checksum=abc a /b
