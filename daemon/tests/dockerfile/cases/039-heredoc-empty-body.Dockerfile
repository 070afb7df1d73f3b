FROM alpine
COPY <<EMPTY /empty
EMPTY
